"""``python -m tlbench``: the ``tlbench`` command, for environments whose scripts are not on PATH."""

from tlbench.cli import main

if __name__ == "__main__":
    main()
