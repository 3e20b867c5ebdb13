/*
 * snapshot_restore — the `ballast snapshot ...` command (only `restore`):
 * a new data directory from a snapshot file, like `etcdctl snapshot
 * restore`. See snapshot_restore.c.
 */
#ifndef BALLAST_SERVER_SNAPSHOT_RESTORE_H
#define BALLAST_SERVER_SNAPSHOT_RESTORE_H

/* Runs `ballast snapshot restore FILE [flags]` (argv[1] is "snapshot");
 * returns the process exit status. */
int snapshot_command_main(int argc, char **argv, char **envp);

#endif
