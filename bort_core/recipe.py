"""`--recipe {default,release}`: one switch between this project's training behaviour and the
2020 release's, applied at once by `pretrain`, `finetune`, `agora` and `extract`.

`default` keeps our corrected behaviour; `release` sets every behaviour the release had, quirks
that change numbers included (docs/fidelity.md lists each one with the option that sets it
alone). Options a user sets explicitly win over the recipe's value.
"""
from __future__ import annotations

RECIPES = ("default", "release")


def add_recipe_argument(parser) -> None:
    parser.add_argument("--recipe", choices=RECIPES, default="default",
                        help="default: this project's behaviour; release: every behaviour of "
                        "the 2020 release at once (docs/fidelity.md)")
