import sys

from callbackd.cli import main

sys.exit(main())
