"""``python -m ebcap``."""

from ebcap.cli import main

main()
