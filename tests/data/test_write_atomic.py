"""write_text_atomic: the package's one atomic writer (text, bytes or a writer function)."""

import pytest

from lightning_topo.data.files import write_text_atomic


def test_writes_text_bytes_and_callables(tmp_path):
    assert write_text_atomic(tmp_path / "a" / "t.txt", "é\n").read_text(encoding="utf-8") == "é\n"
    assert write_text_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_text("x")

    assert write_text_atomic(tmp_path / "c.png", write).read_text() == "x"
    assert seen[0].suffix == ".png" and seen[0].parent == tmp_path and seen[0] != tmp_path / "c.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b.bin", "c.png"]


def test_refuses_an_existing_file_unless_overwrite(tmp_path):
    path = write_text_atomic(tmp_path / "r.json", "1")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_text_atomic(path, "2")
    assert path.read_text() == "1"
    assert write_text_atomic(path, "2", overwrite=True).read_text() == "2"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "keep.csv", "old")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_text_atomic(path, fail, overwrite=True)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["keep.csv"]
