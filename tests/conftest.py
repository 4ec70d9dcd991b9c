import sys
from pathlib import Path

# tests import helpers (reference_layout, data generators) from this folder
sys.path.insert(0, str(Path(__file__).parent))
