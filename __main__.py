"""`python -m dermground` runs the CLI."""

from dermground.platform.cli import main

if __name__ == "__main__":
    main()
