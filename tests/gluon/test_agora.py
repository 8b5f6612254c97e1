"""`bort agora` end to end on the gluon Backend with point generation (the check, shared with
the other framework: tests/conftest.py)."""
import pytest

pytest.importorskip("mxnet")
pytestmark = [pytest.mark.gluon, pytest.mark.filterwarnings("ignore:the reference model")]


def test_agora_generates_reference_labelled_points_and_prunes(agora_end_to_end):
    agora_end_to_end("gluon")
