"""`python -m console`: the `taming` command (used for child processes that must load torch)."""

from console import main

if __name__ == "__main__":
    main(prog_name="taming")
