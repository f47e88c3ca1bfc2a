"""BioEngine app formats: read and check an app's files without running them. Pure (pyyaml,
packaging): no Ray, no Hypha, no import of the app's code.

Two formats side by side: ``format_version: 0.6.0`` (``entry: module:Class``, the ``bioengine``
authoring SDK) and the current format (``deployments:`` with ``@serve.deployment`` classes,
``format_version: 0.5.0`` or none). See the README of ``libs/bioengine-app-format``.
"""

from ._analysis import AppAnalysis, analyze_app
from ._app import (
    FORMAT_05,
    AppCheck,
    AppManifest,
    check_app,
    format_version_of,
    load_app_manifest,
    load_manifest,
    validate_upload,
    version_action,
)
from ._manifest import (
    ID_PATTERN,
    MANIFEST_NAMES,
    REQUIRED_FIELDS,
    check_authorized_users,
    decode_files,
    validate_manifest,
    version_key,
)
from ._problems import AppFormatError, Problem
from ._replica import reaches_replicas, replica_files
from ._sources import RESERVED_METHODS, check_sources_06
from ._v06 import ENTRY_PATTERN, FORMAT_06, REQUIRED_FIELDS_06, validate_manifest_06

__all__ = [
    "ENTRY_PATTERN",
    "FORMAT_05",
    "FORMAT_06",
    "ID_PATTERN",
    "MANIFEST_NAMES",
    "REQUIRED_FIELDS",
    "REQUIRED_FIELDS_06",
    "RESERVED_METHODS",
    "AppAnalysis",
    "AppCheck",
    "AppFormatError",
    "AppManifest",
    "Problem",
    "analyze_app",
    "check_app",
    "check_authorized_users",
    "check_sources_06",
    "decode_files",
    "format_version_of",
    "load_app_manifest",
    "load_manifest",
    "reaches_replicas",
    "replica_files",
    "validate_manifest",
    "validate_manifest_06",
    "validate_upload",
    "version_action",
    "version_key",
]
