"""The line count behind ``malformed``: every line that is not blank, whatever
the chunks the file is read in (a blank line may straddle two)."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from authz.analysis.logs import _count_lines


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60).map(lambda raw: raw.translate(bytes.maketrans(b"\x00\x01\x02\x03", b"\n \t{"))),
       st.integers(min_value=1, max_value=8))  # fmt: skip
def test_the_count_is_the_non_blank_lines_for_any_chunk_size(text: bytes, chunk_size: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "d.jsonl"
        path.write_bytes(text)
        lines = text.split(b"\n")[: -1 if text.endswith(b"\n") else None]  # split as JSON lines are
        expected = sum(1 for line in lines if line.strip(b" \t\r\f\v"))
        assert _count_lines(str(path), chunk_size) == expected
        (Path(directory) / "d.jsonl.gz").write_bytes(gzip.compress(text))
        assert _count_lines(str(Path(directory) / "d.jsonl.gz"), chunk_size) == expected
