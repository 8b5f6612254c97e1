"""bort_core.io: atomic writes, file modes, orphan temp files and their cleanup at command start."""
import errno
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from bort_core import arch
from bort_core import checkpoint as ckpt
from bort_core import io as bio
from bort_core.cli import build_parser, main
from bort_core.configs import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _killed_mid_write(directory, name="model.params"):
    """Run a writer that is SIGKILLed half-way through an atomic write; returns its pid."""
    code = textwrap.dedent("""
        import os, signal, sys
        from bort_core import io
        with io.atomic_open(os.path.join(sys.argv[1], sys.argv[2]), "wb") as f:
            f.write(b"half")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    child = subprocess.Popen([sys.executable, "-c", code, directory, name],
                             env=dict(os.environ, PYTHONPATH=ROOT))
    child.wait()
    assert child.returncode == -9
    return child.pid


def test_write_replaces_with_plain_or_kept_modes(tmp_path):
    path = str(tmp_path / "a.txt")
    bio.write_text(path, "one")
    assert open(path).read() == "one"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()
    os.chmod(path, 0o600)
    bio.write_bytes(path, b"two")
    assert open(path).read() == "two" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(str(tmp_path)) == ["a.txt"]


def test_failure_keeps_the_old_file_and_no_temp(tmp_path):
    path = str(tmp_path / "a.txt")
    bio.write_text(path, "old")
    with pytest.raises(RuntimeError, match="boom"):
        with bio.atomic_open(path) as f:
            f.write("new, half")
            raise RuntimeError("boom")
    assert open(path).read() == "old" and os.listdir(str(tmp_path)) == ["a.txt"]


def test_errors_name_the_destination_not_the_temp(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError) as err:
        bio.write_text(str(blocker / "out.txt"), "x")
    assert err.value.filename == str(blocker / "out.txt")

    path = str(tmp_path / "out.txt")
    with pytest.raises(OSError) as err:
        with bio.atomic_open(path, "wb"):
            raise OSError(errno.ENOSPC, "No space left on device")   # as a failed write()
    assert err.value.errno == errno.ENOSPC and err.value.filename == path
    assert sorted(os.listdir(str(tmp_path))) == ["a-file"]


def test_refuses_a_destination_of_another_kind(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        bio.write_text(str(folder), "x")
    with pytest.raises(OSError, match="not a regular file") as err:
        bio.write_text(os.devnull, "x")
    assert err.value.filename == os.devnull and os.path.exists(os.devnull)
    with pytest.raises(NotADirectoryError):
        with bio.atomic_path(__file__, directory=True):
            pass
    with pytest.raises(NotADirectoryError, match="not a directory"):
        bio.ensure_dir(__file__)
    assert sorted(os.listdir(str(tmp_path))) == ["folder"]


def test_writes_through_a_symlink(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    bio.write_text(str(link), "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_a_folder_takes_its_place_whole(tmp_path):
    path = str(tmp_path / "pair")
    with bio.atomic_path(path, directory=True) as tmp:
        for name in ("a", "b"):
            with open(os.path.join(tmp, name), "w") as f:
                f.write(name)
    assert sorted(os.listdir(path)) == ["a", "b"] and os.listdir(str(tmp_path)) == ["pair"]


def test_check_writable_leaves_nothing(tmp_path):
    bio.check_writable(str(tmp_path / "x.params"))
    bio.check_writable(str(tmp_path / "missing" / "x.params"))   # the writer may create it
    assert os.listdir(str(tmp_path)) == []
    (tmp_path / "x.onnx").mkdir()
    with pytest.raises(IsADirectoryError):
        bio.check_writable(str(tmp_path / "x.onnx"))


def test_orphans_of_dead_writers_are_removed_others_kept(tmp_path):
    directory = str(tmp_path)
    dead = _killed_mid_write(directory)
    orphan = [n for n in os.listdir(directory) if n.startswith(".model.params.")]
    assert orphan == [".model.params.%d-%s.tmp" % (dead, orphan[0][-12:-4])]
    os.mkdir(os.path.join(directory, ".hf.%d-0123abcd.tmp" % dead))       # a staging folder
    mine = os.path.basename(bio.temp_name(os.path.join(directory, "x")))  # this process's
    live = ".y.%d-0123abcd.tmp" % os.getppid()
    others = ["x.tmp", ".x.tmp", "part-000.npz.tmp", ".hf.1-0123abcd.tmp.old", "model.params"]
    for name in [mine, live] + others:
        open(os.path.join(directory, name), "w").close()
    removed = bio.remove_orphans(directory)
    assert sorted(os.path.basename(p) for p in removed) == sorted(
        [orphan[0], ".hf.%d-0123abcd.tmp" % dead])
    assert sorted(os.listdir(directory)) == sorted([mine, live] + others)
    assert bio.remove_orphans(os.path.join(directory, "missing")) == []


def test_the_next_convert_removes_the_orphan(tmp_path, capsys):
    config = get_config("bort_tiny").replace(vocab_size=64)
    params = {n: np.zeros(s, np.float32) for n, s in arch.canonical_shapes(config).items()}
    src = str(tmp_path / "src.params")
    ckpt.save_params(src, params)
    out = tmp_path / "out"
    out.mkdir()
    _killed_mid_write(str(out), "model.params")
    assert len(os.listdir(str(out))) == 1
    assert main(["convert", src, str(out / "model.params"), "--config", "bort_tiny"]) == 0
    assert os.listdir(str(out)) == ["model.params"]
    assert "removed %s" % out in capsys.readouterr().err


@pytest.mark.parametrize("argv,folder", [
    (["convert", "a.params", "d/b.pt"], "d"),
    (["convert", "a.params", "d/hf"], "d"),
    (["export-onnx", "a.params", "d/b.onnx"], "d"),
    (["extract", "--output-dir", "d"], "d"),
    (["finetune", "--framework", "torch", "--task", "demo-single", "--output-dir", "d"], "d"),
    (["agora", "--framework", "torch", "--task", "demo-single", "--output-dir", "d",
      "--reference-checkpoint", "r.params"], "d"),
    (["create-pretraining-data", "--output-dir", "d"], "d"),
])
def test_writing_commands_declare_their_folders(argv, folder):
    args = build_parser().parse_args(argv)
    assert [os.path.abspath(p) for p in args.writes(args)] == [os.path.abspath(folder)]
