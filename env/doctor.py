"""`python env/doctor.py`: the doctor's command (the logic lives in ../doctor.py, which the page uses too)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from doctor import main

if __name__ == "__main__":
    sys.exit(main())
