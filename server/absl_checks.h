#ifndef BALLAST_ABSL_CHECKS_H
#define BALLAST_ABSL_CHECKS_H

/* Debian 12's abseil, under gRPC, is built with its debug checks on: every
 * lock of an absl::Mutex (gRPC takes several per call) records the lock in
 * a global deadlock-detection graph, under a global lock, with a stack
 * trace for each new edge. absl_deadlock_detection_off() switches that off
 * for the whole process with abseil's own call; a program that uses gRPC
 * calls it once, before its first call. It does nothing where the abseil
 * loaded is not Debian's build. Used by the server and by ballast-bench. */
void absl_deadlock_detection_off(void);

#endif
