import sys
from pathlib import Path

# tests import helpers (reference_layout, data generators) from this folder
sys.path.insert(0, str(Path(__file__).parent))

# the demo's data generators and small configs live with it in tools/;
# appended, not first: tools/ also holds test.py and train.py
sys.path.append(str(Path(__file__).parents[1] / 'tools'))
