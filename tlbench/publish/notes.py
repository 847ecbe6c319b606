"""Problems met while reading the input, each one line naming the file or run at fault.

They are printed as warnings by the command and listed on the site's front page, so a reader
of the published site sees what was left out and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Notes:
    lines: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        if message not in self.lines:
            self.lines.append(message)

    def __iter__(self):
        return iter(self.lines)

    def __len__(self) -> int:
        return len(self.lines)
