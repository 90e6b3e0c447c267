/* One directory's entries, stat'ed without following symlinks: the inner loop of
 * cachemgr.scanner in C. os.scandir + DirEntry.stat cost about a microsecond of Python objects
 * per entry on top of the fstatat itself; `du` pays only the system calls.
 *
 * scan_dir(fd) -> (blocks, files, subdirs, linked, changed)
 *   fd       an open directory descriptor; it is duplicated, never closed, and its offset
 *            (which the duplicate shares) is left at the start
 *   blocks   st_blocks summed over the entries that are neither directories nor hard-linked
 *   files    regular files among those
 *   subdirs  [(name, st_blocks)] of the entries that are directories
 *   linked   [(st_dev, st_ino, st_blocks, is_regular)] of non-directories with st_nlink > 1,
 *            left to the caller, which counts each inode once across the whole tree
 *   changed  the newest st_ctime among all the entries (0.0 when there are none), as
 *            os.stat_result.st_ctime computes it
 * An entry that vanishes between readdir and fstatat is skipped, as os.scandir's caller does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static PyObject *scan_dir(PyObject *self, PyObject *args) {
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd)) return NULL;
    int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (own < 0) return PyErr_SetFromErrno(PyExc_OSError);
    DIR *dir = fdopendir(own);
    if (dir == NULL) {
        int saved = errno;
        close(own);
        errno = saved;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    rewinddir(dir); /* a duplicate shares the offset: start from the first entry */
    PyObject *subdirs = PyList_New(0), *linked = PyList_New(0);
    unsigned long long blocks = 0, files = 0;
    double changed = 0.0;
    if (subdirs == NULL || linked == NULL) goto fail;
    for (;;) {
        errno = 0;
        struct dirent *ent = readdir(dir);
        if (ent == NULL) {
            if (errno != 0) {
                PyErr_SetFromErrno(PyExc_OSError);
                goto fail;
            }
            break;
        }
        const char *name = ent->d_name;
        if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0))) continue;
        struct stat st;
        if (fstatat(own, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno == ENOENT) continue;
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
            goto fail;
        }
        double ctime = (double)st.st_ctim.tv_sec + (double)st.st_ctim.tv_nsec * 1e-9;
        if (ctime > changed) changed = ctime;
        PyObject *item = NULL;
        if (S_ISDIR(st.st_mode)) {
            item = Py_BuildValue("(O&K)", PyUnicode_DecodeFSDefault, name,
                                 (unsigned long long)st.st_blocks);
            if (item == NULL || PyList_Append(subdirs, item) != 0) goto fail_item;
        } else if (st.st_nlink > 1) {
            item = Py_BuildValue("(KKKi)", (unsigned long long)st.st_dev,
                                 (unsigned long long)st.st_ino,
                                 (unsigned long long)st.st_blocks, S_ISREG(st.st_mode) ? 1 : 0);
            if (item == NULL || PyList_Append(linked, item) != 0) goto fail_item;
        } else {
            blocks += (unsigned long long)st.st_blocks;
            if (S_ISREG(st.st_mode)) files++;
        }
        Py_XDECREF(item);
        continue;
    fail_item:
        Py_XDECREF(item);
        goto fail;
    }
    rewinddir(dir); /* the shared offset back at the start, where os.scandir expects it */
    closedir(dir);
    PyObject *out = Py_BuildValue("(KKNNd)", blocks, files, subdirs, linked, changed);
    return out;
fail:
    rewinddir(dir);
    closedir(dir);
    Py_XDECREF(subdirs);
    Py_XDECREF(linked);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan_dir", scan_dir, METH_VARARGS,
     "One directory's entries: (blocks, files, subdirs, linked, changed)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_scandir", NULL, -1, methods};

/* VERSION: the shape of scan_dir's reply. A module built from an older source (an install
 * not rebuilt after an update) lacks it or differs, and the scanner uses its Python loop. */
PyMODINIT_FUNC PyInit__scandir(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "VERSION", 2) != 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
