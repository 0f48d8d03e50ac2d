"""`python -m jobs_pipeline.interfaces.cli`, the same as `jobs-pipeline`."""

import sys

from jobs_pipeline.interfaces.cli import main

sys.exit(main())
