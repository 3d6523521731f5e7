"""Allow ``python -m corridor``."""

from corridor.cli import main

main()
