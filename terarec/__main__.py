"""``python -m terarec`` = the ``terarec`` command."""

import sys

from terarec.cli.main import main

sys.exit(main())
