#ifndef RULESD_CFILESYSTEMINFO_SHIM_H
#define RULESD_CFILESYSTEMINFO_SHIM_H
// statfs(2), which Swift's Glibc module does not export: the rule tree scanner asks which file system a
// directory is on, to keep out of kernel file systems such as /proc and /sys.
#include <stdint.h>
#include <sys/vfs.h>

/// The file system type (f_type, a magic number from <linux/magic.h>) of the file system holding `path`;
/// -1 when it cannot be told.
static inline int64_t rulesd_file_system_type(const char *path) {
    struct statfs info;
    if (statfs(path, &info) != 0) return -1;
    return (int64_t)info.f_type;
}
#endif
