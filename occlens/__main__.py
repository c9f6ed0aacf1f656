"""``python -m occlens`` is the ``occlens`` command."""

from ._cli import main

raise SystemExit(main())
