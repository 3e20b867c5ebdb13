/* segment_check: a look at c-raft's open log segments before c-raft loads
 * them.
 *
 * c-raft 0.15 discards a torn last batch of an open segment (one whose
 * checksum fails), but an open segment file that ends inside a batch (the
 * file was cut: copied short, truncated) makes its loader free memory twice
 * and the process abort. Ballast refuses such a directory instead, with a
 * message that names the file. */
#ifndef BALLAST_SEGMENT_CHECK_H
#define BALLAST_SEGMENT_CHECK_H

/* Checks every open segment ("open-N") in the raft directory `dir`: each
 * batch whose header is present must lie wholly inside the file. Returns 0
 * when they do (or when `dir` has no open segment); otherwise -1 with a
 * malloc'd message in *errmsg (the caller frees it). Reads only. */
int segment_check_open(const char *dir, char **errmsg);

#endif
