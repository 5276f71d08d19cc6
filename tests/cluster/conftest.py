"""Make the helpers next to these tests (kube_emulator, slurm_cluster) importable."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
