#ifndef RULESD_CINOTIFYTOOLS_SHIM_H
#define RULESD_CINOTIFYTOOLS_SHIM_H
#include <sys/inotify.h>
#include <inotifytools/inotifytools.h>
#endif
