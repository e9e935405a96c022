"""dermground: attribute-grounded retrieval of skin-lesion images."""

__version__ = "0.1.0"
