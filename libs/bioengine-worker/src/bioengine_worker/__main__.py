"""``python -m bioengine_worker``: same as ``bioengine-worker``."""

from ._launcher import main

if __name__ == "__main__":
    main()
