"""Print a command block of README.md that is marked for CI, so that CI runs exactly what the README shows.

A marked block is a fenced code block right after a line ``<!-- ci: NAME -->``:

    python .ci/readme_commands.py main-job    # the main-job command
    python .ci/readme_commands.py tests       # the test command
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

MARKED_BLOCK = re.compile(r"^<!-- ci: ([\w-]+) -->\n```\w*\n(.*?)\n```$", re.MULTILINE | re.DOTALL)


def readme_commands(text: str) -> dict[str, str]:
    """{name: command} of every marked fenced block in the README text."""
    return {name: body for name, body in MARKED_BLOCK.findall(text)}


if __name__ == "__main__":
    readme = Path(__file__).resolve().parents[1] / "README.md"
    commands = readme_commands(readme.read_text())
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(commands)}}}")
    print(commands[sys.argv[1]])
