import sys

from seqserve.cli import main

sys.exit(main())
