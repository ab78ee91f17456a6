"""The cards an estimate is compared with when no GPU is present (light: the GUI builds its list without torch)."""
from __future__ import annotations

CARD_SIZES = (8, 12, 16, 24, 48, 80)  # GB
THIS_GPU = "GPU in this machine"
DEFAULT_CARD = 24  # GB, compared with when there is no GPU and none was chosen
CARD_CHOICES = [THIS_GPU] + [f"{size} GB" for size in CARD_SIZES]


def card_bytes(gigabytes: float) -> int:
    """A card sold as N GB: N x 10^9 bytes (an "8 GB" card has 7.45 GiB); the CUDA context is counted in the
    estimate."""
    return int(gigabytes * 1e9)
