"""Product files on disk: layout templates, atomic writes, verification (no database here)."""

from mirror.store.files import Store
from mirror.store.layout import DEFAULT_TEMPLATE, extension_for, render, validate_template
from mirror.store.verify import Verdict, sha256_file, verify_file

__all__ = ["DEFAULT_TEMPLATE", "Store", "Verdict", "extension_for", "render", "sha256_file",
           "validate_template", "verify_file"]
