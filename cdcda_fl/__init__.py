"""cdcda-fl: cloud-device collaborative data augmentation for personalized on-device language models.

The library knows nothing of Flower: `clients/` and `strategies/` translate Flower messages
into the plain objects defined here, so every piece is testable without a federation.
"""

__version__ = "0.1.0"
