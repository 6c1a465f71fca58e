"""Rules shared across the torch boundary: torch-free, imported by the library (taming/), the API (app/) and the
worker alike, so that each rule is written once."""
