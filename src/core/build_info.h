/* What this binary was built from: TMS_VERSION (CMake's project version, a compile
 * definition of every target) and the git commit of the source tree, written at build
 * time by cmake/build_info.cmake ("unknown" outside a git checkout, "-dirty" appended
 * when tracked files had changes). /metrics shows both as tms_build_info. */
#ifndef TMS_CORE_BUILD_INFO_H
#define TMS_CORE_BUILD_INFO_H

extern const char tms_build_commit[];

#endif
