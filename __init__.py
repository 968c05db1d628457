"""mmfer: audio-visual emotion recognition from cached frozen-encoder features."""

__version__ = "0.1.0"
