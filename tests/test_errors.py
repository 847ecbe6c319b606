"""The one-line forms of an exception (tlbench/errors.py)."""

from tlbench.errors import first_line, typed_first_line


def test_first_line_is_the_first_non_blank_line_or_the_type_name():
    assert first_line(ValueError("\n  bad shape  \nmore detail")) == "bad shape"
    assert first_line(ValueError("")) == "ValueError"


def test_typed_first_line_prefixes_the_type_name():
    assert typed_first_line(KeyError("shape")) == "KeyError: 'shape'"
    assert typed_first_line(OSError("\n  truncated file\nat byte 12")) == "OSError: truncated file"
    assert typed_first_line(EOFError()) == "EOFError"
    assert typed_first_line(ValueError("  \n ")) == "ValueError"
