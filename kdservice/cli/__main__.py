import sys

from kdservice.cli import main

sys.exit(main())
