"""``python -m common.featviz`` = the ``featviz`` console script."""
import sys

from common.featviz.cli import main

sys.exit(main())
