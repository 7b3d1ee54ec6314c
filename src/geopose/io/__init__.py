"""Readers and writers for the competition / US3D layout (see CONVENTIONS.md)."""

from geopose.io.atomic import (
    atomic_path,
    check_output_dir,
    check_output_file,
    ensure_output_dir,
    remove_stale_temps,
    write_bytes_atomic,
    write_text_atomic,
)
from geopose.io.cog import SCENE_CACHE_MB, BlockWriter, is_cog
from geopose.io.geotiff import Georef, read_georef, write_geotiff
from geopose.io.layout import (
    CITIES,
    agl_name,
    city_of,
    find_rgb,
    rgb_name,
    split_name,
    vflow_name,
)
from geopose.io.rasters import (
    AGL_NODATA,
    agl_cm_to_m,
    agl_m_to_cm,
    agl_to_m,
    read_agl,
    read_agl_raw,
    read_rgb,
    write_agl,
    write_rgb,
)
from geopose.io.scene import (
    Scene,
    Stretch,
    compute_stretch,
    default_bands,
    georef_gsd,
    parse_bands,
)
from geopose.io.submission import (
    pack_submission,
    prediction_files,
    prediction_stems,
    write_prediction,
)
from geopose.io.tables import load_index, read_metadata
from geopose.io.vflow import Vflow, parse_vflow, read_vflow, vflow_json, write_vflow

__all__ = [
    "AGL_NODATA",
    "BlockWriter",
    "SCENE_CACHE_MB",
    "CITIES",
    "Georef",
    "Scene",
    "Stretch",
    "Vflow",
    "agl_cm_to_m",
    "agl_m_to_cm",
    "agl_name",
    "agl_to_m",
    "atomic_path",
    "check_output_dir",
    "check_output_file",
    "city_of",
    "compute_stretch",
    "default_bands",
    "ensure_output_dir",
    "find_rgb",
    "georef_gsd",
    "is_cog",
    "load_index",
    "pack_submission",
    "parse_bands",
    "parse_vflow",
    "prediction_files",
    "prediction_stems",
    "read_agl",
    "read_agl_raw",
    "read_georef",
    "read_metadata",
    "read_rgb",
    "read_vflow",
    "remove_stale_temps",
    "rgb_name",
    "split_name",
    "vflow_json",
    "vflow_name",
    "write_agl",
    "write_bytes_atomic",
    "write_geotiff",
    "write_prediction",
    "write_rgb",
    "write_text_atomic",
    "write_vflow",
]
