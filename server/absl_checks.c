#include "absl_checks.h"

#include <dlfcn.h>

/* The call is absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::
 * kIgnore). It is C++, so it is looked up by its name in Debian's build
 * (inline namespace debian3). */
void absl_deadlock_detection_off(void)
{
    void (*set_mode)(int) = (void (*)(int))dlsym(
        RTLD_DEFAULT, "_ZN4absl7debian329SetMutexDeadlockDetectionModeENS0_15OnDeadlockCycleE");
    if (set_mode)
        set_mode(0 /* kIgnore */);
}
