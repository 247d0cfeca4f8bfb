/* carl/fs.h: output files that are written whole or not at all, directories with their parents,
 * and the CRC32C checksum of files.
 *
 * Usage:
 *   CARL_TRY(carl_fs_mkdir_p("out/run/step_00000"));      // parents too; errors name the part at fault
 *   CARL_TRY(carl_write_file_atomic("out/run/report.json", text, strlen(text)));   // (carl/core.h)
 *
 *   // two files that appear together: both written and fsync'ed first, then both renamed
 *   carl_fs_staged_t a, b;
 *   carl_status st = carl_fs_stage(&a, "p.json", &(carl_fs_part_t){pj, pn}, 1);
 *   if (!st) st = carl_fs_stage(&b, "p.report.json", &(carl_fs_part_t){rj, rn}, 1);
 *   if (!st) st = carl_fs_commit(&a);
 *   if (!st) st = carl_fs_commit(&b);
 *   carl_fs_discard(&a);   // removes what was not committed; a no-op after carl_fs_commit
 *   carl_fs_discard(&b);
 *
 *   // a set of outputs in one directory: written into a work directory inside it, moved in at the end
 *   char work[CARL_FS_PATH_MAX];
 *   CARL_TRY(carl_fs_work_begin("out/run", work, sizeof work));   // out/run/.carl-partial-XXXXXX
 *   st = ...write work/experts.npy, work/step_00000/... ...;
 *   st = st ? (carl_fs_remove_tree(work), st) : carl_fs_work_commit(work, "out/run");
 *
 *   uint32_t crc;
 *   CARL_TRY(carl_fs_crc32c_file("ckpt/model.safetensors", &crc));
 *
 * A file is written to a temporary of a unique name in its own directory (created with O_EXCL),
 * every write is checked, the file is fsync'ed and closed (both checked), renamed over the target
 * and the directory is fsync'ed: a crash or an error leaves either the old file or the complete new
 * one, never a part, and errors name the target (not the temporary). The target may be missing, a
 * regular file or a symbolic link (the link itself is replaced); anything else (a directory, a
 * device such as /dev/null) is refused and left alone.
 *
 * Ownership: carl_fs_staged_t is caller storage; each staged file is either committed or discarded.
 */
#ifndef CARL_FS_H
#define CARL_FS_H

#include <stddef.h>
#include <stdint.h>

#include "carl/core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CARL_FS_PATH_MAX 4096

/* Create path and its missing parents (mode 0755). An existing directory is fine; an existing
 * non-directory at any level is an error naming that level. */
carl_status carl_fs_mkdir_p(const char *path);

/* fsync a directory (after a rename in it); file systems that cannot (EINVAL) are accepted. */
carl_status carl_fs_sync_dir(const char *dir);

/* One piece of a file's content. */
typedef struct {
  const void *data;
  size_t len;
} carl_fs_part_t;

typedef struct {
  char path[CARL_FS_PATH_MAX]; /* the target */
  char tmp[CARL_FS_PATH_MAX];  /* the complete temporary; "" once committed or discarded */
} carl_fs_staged_t;

/* Write the parts, in order, to a complete and fsync'ed temporary next to path. */
carl_status carl_fs_stage(carl_fs_staged_t *s, const char *path, const carl_fs_part_t *parts, int nparts);
/* Rename the temporary over the target and fsync the directory. */
carl_status carl_fs_commit(carl_fs_staged_t *s);
/* Remove the temporary when it was not committed (safe to call twice, and after commit). */
void carl_fs_discard(carl_fs_staged_t *s);
/* carl_fs_stage + carl_fs_commit: the file whole or not at all. */
carl_status carl_fs_write_parts(const char *path, const carl_fs_part_t *parts, int nparts);

/* Create dir (with parents) and a new empty work directory dir/.carl-partial-XXXXXX inside it; its
 * path goes into work. */
carl_status carl_fs_work_begin(const char *dir, char *work, size_t cap);
/* Move every entry of work into dir (a file replaces the file of that name; a directory replaces
 * the directory of that name), fsync dir, then remove work. */
carl_status carl_fs_work_commit(const char *work, const char *dir);
/* Rename the complete directory tmp to dir (in the same parent). A directory already at dir is
 * moved aside first and removed once tmp has taken its place; the parent is fsync'ed. */
carl_status carl_fs_replace_dir(const char *tmp, const char *dir);
/* Remove path and everything below it (symbolic links are removed, not followed). Missing is fine. */
carl_status carl_fs_remove_tree(const char *path);

/* Replace every `from` in the current error message (carl_errmsg) by `to`, e.g. a work directory by
 * the output directory it stands for. Returns st. */
carl_status carl_fs_errmsg_replace(carl_status st, const char *from, const char *to);

/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78, as in iSCSI, RFC 3720): start with crc = 0
 * and pass the result back in to continue; carl_crc32c(0, "123456789", 9) == 0xE3069283. */
uint32_t carl_crc32c(uint32_t crc, const void *data, size_t len);
/* CRC32C of a whole file. */
carl_status carl_fs_crc32c_file(const char *path, uint32_t *crc);

#ifdef __cplusplus
}
#endif
#endif
