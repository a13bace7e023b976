"""`python env/doctor.py`: the doctor's command (its checks live in gptq_chat/doctor/, which the page uses too)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gptq_chat.doctor.checks import main

if __name__ == "__main__":
    sys.exit(main())
