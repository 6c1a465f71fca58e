"""Taming normalizing flows: make a Glow forget images (Malnick, Avidan, Fried, WACV 2024)."""

__version__ = "0.1.0"
