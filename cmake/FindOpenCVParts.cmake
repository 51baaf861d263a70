# Finds the three OpenCV modules millrace uses (core, imgproc, imgcodecs) from Debian's
# per-module -dev packages, which ship headers and libraries but not OpenCVConfig.cmake (only the
# libopencv-dev meta package, which pulls in every module, does). Defines OpenCV::parts.
find_path(OpenCVParts_INCLUDE_DIR opencv2/core.hpp PATH_SUFFIXES opencv4)
find_library(OpenCVParts_core_LIBRARY opencv_core)
find_library(OpenCVParts_imgproc_LIBRARY opencv_imgproc)
find_library(OpenCVParts_imgcodecs_LIBRARY opencv_imgcodecs)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(OpenCVParts REQUIRED_VARS OpenCVParts_INCLUDE_DIR
  OpenCVParts_core_LIBRARY OpenCVParts_imgproc_LIBRARY OpenCVParts_imgcodecs_LIBRARY)
if(OpenCVParts_FOUND AND NOT TARGET OpenCV::parts)
  add_library(OpenCV::parts INTERFACE IMPORTED)
  set_target_properties(OpenCV::parts PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${OpenCVParts_INCLUDE_DIR}"
    INTERFACE_LINK_LIBRARIES
      "${OpenCVParts_imgcodecs_LIBRARY};${OpenCVParts_imgproc_LIBRARY};${OpenCVParts_core_LIBRARY}")
endif()
