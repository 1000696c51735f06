#ifndef RULESD_CFILESYSTEMINFO_SHIM_H
#define RULESD_CFILESYSTEMINFO_SHIM_H
// statfs(2), which Swift's Glibc module does not export: the rule tree scanner asks which file system a
// directory is on, to keep out of kernel file systems such as /proc and /sys.
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

/// The file system type (f_type, a magic number from <linux/magic.h>) of the file system holding `path`;
/// -1 when it cannot be told.
static inline int64_t rulesd_file_system_type(const char *path) {
    struct statfs info;
    if (statfs(path, &info) != 0) return -1;
    return (int64_t)info.f_type;
}

/// syncfs(2) on the file system holding the open file `fd` (Swift's Glibc module does not export syncfs, a GNU
/// extension): one journal commit makes many freshly written files durable, where an fsync per file costs a
/// commit each. 0 on success, -1 with errno set otherwise.
static inline int rulesd_sync_file_system(int fd) {
    return (int)syscall(SYS_syncfs, fd);
}
#endif
