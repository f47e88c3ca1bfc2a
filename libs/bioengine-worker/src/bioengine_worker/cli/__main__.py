"""``python -m bioengine_worker.cli``: the ``bioengine`` command."""

from . import main

main()
