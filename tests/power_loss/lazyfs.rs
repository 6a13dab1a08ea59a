//! A FUSE file system that forgets what was never synced, in the style of
//! LazyFS: every write since a file's last `fsync`/`fdatasync`, and every
//! directory change since that directory's last `fsync`, lives only in
//! memory and is thrown away by [`PowerSwitch::cut`].
//!
//! `kill -9` cannot find a missing fsync: the kernel's page cache survives
//! the process. This file system is what the disk keeps after a power cut,
//! under the strictest reading of POSIX (no ext4-style "rename implies
//! flush"; a new file's name needs its directory synced).
//!
//! The whole tree is held in memory; after a cut the test unmounts and
//! mounts again so that the kernel's caches of the old, unsynced view are
//! gone too. Only what the spool and sled use is implemented; anything else
//! answers `ENOSYS`, which the kernel reports to the caller.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};

/// No attribute or entry caching in the kernel: sizes change under it.
const TTL: Duration = Duration::ZERO;
const BLOCK: u64 = 4096;
/// What `statfs` reports as the disk's size (the spool checks free space).
const CAPACITY: u64 = 4 << 30;

enum Node {
    File {
        data: Vec<u8>,
        durable: Vec<u8>,
    },
    Dir {
        parent: u64,
        entries: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
}

struct Inode {
    node: Node,
    /// The name it was created with: the switch can single out files by name.
    name: OsString,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct Counters {
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub ignored_syncs: u64,
    pub cuts: u64,
    /// Files and directories a cut changed (what was written but not synced).
    pub cut_files: u64,
    pub cut_entries: u64,
}

struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    /// A file whose name ends with this has its fsyncs ignored: a disk that
    /// lies, to show the test notices when a sync is missing.
    ignore_sync_suffix: Option<String>,
    counters: Counters,
}

/// The test's handle on the file system's state, shared by every mount.
#[derive(Clone)]
pub struct PowerSwitch {
    state: Arc<Mutex<State>>,
}

impl PowerSwitch {
    pub fn new() -> PowerSwitch {
        let mut inodes = HashMap::new();
        inodes.insert(
            INodeNo::ROOT.0,
            Inode {
                node: Node::Dir {
                    parent: INodeNo::ROOT.0,
                    entries: BTreeMap::new(),
                    durable: BTreeMap::new(),
                },
                name: OsString::from("/"),
                perm: 0o755,
                uid: unsafe { libc::geteuid() },
                gid: unsafe { libc::getegid() },
                mtime: SystemTime::now(),
            },
        );
        PowerSwitch {
            state: Arc::new(Mutex::new(State {
                inodes,
                next_ino: INodeNo::ROOT.0 + 1,
                ignore_sync_suffix: None,
                counters: Counters::default(),
            })),
        }
    }

    pub fn ignore_syncs_of(&self, suffix: &str) {
        self.lock().ignore_sync_suffix = Some(suffix.to_string());
    }

    pub fn counters(&self) -> Counters {
        self.lock().counters
    }

    /// Power loss: every file and directory goes back to what it was at its
    /// last sync. Call only when no process has the file system open.
    pub fn cut(&self) {
        let mut state = self.lock();
        let mut files = 0;
        let mut entries = 0;
        for inode in state.inodes.values_mut() {
            match &mut inode.node {
                Node::File { data, durable } => {
                    if data != durable {
                        files += 1;
                        *data = durable.clone();
                    }
                }
                Node::Dir {
                    entries: current,
                    durable,
                    ..
                } => {
                    if current != durable {
                        entries += 1;
                        *current = durable.clone();
                    }
                }
            }
        }
        state.counters.cuts += 1;
        state.counters.cut_files += files;
        state.counters.cut_entries += entries;
    }

    /// Mount at `at` (an empty directory) in a background thread.
    pub fn mount(&self, at: &Path) -> BackgroundSession {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("breakwater-lazyfs".into()),
            MountOption::RW,
        ];
        fuser::spawn_mount(
            LazyFs {
                state: self.state.clone(),
            },
            at,
            &config,
        )
        .unwrap_or_else(|err| {
            panic!(
                "cannot mount the power-loss file system at {}: {err} \
                 (needs /dev/fuse and fusermount3, Debian package fuse3)",
                at.display()
            )
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("lazyfs state")
    }
}

struct LazyFs {
    state: Arc<Mutex<State>>,
}

impl State {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let inode = self.inodes.get(&ino)?;
        let (kind, size, nlink) = match &inode.node {
            Node::File { data, .. } => (FileType::RegularFile, data.len() as u64, 1),
            Node::Dir { .. } => (FileType::Directory, BLOCK, 2),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: inode.mtime,
            mtime: inode.mtime,
            ctime: inode.mtime,
            crtime: inode.mtime,
            kind,
            perm: inode.perm,
            nlink,
            uid: inode.uid,
            gid: inode.gid,
            rdev: 0,
            blksize: BLOCK as u32,
            flags: 0,
        })
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.inodes.get_mut(&dir).map(|inode| &mut inode.node) {
            Some(Node::Dir { entries, .. }) => Ok(entries),
            Some(Node::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn child(&mut self, dir: u64, name: &OsStr) -> Result<Option<u64>, Errno> {
        Ok(self.entries_mut(dir)?.get(name).copied())
    }

    fn is_nonempty_dir(&self, ino: u64) -> bool {
        matches!(self.inodes.get(&ino).map(|i| &i.node), Some(Node::Dir { entries, .. }) if !entries.is_empty())
    }

    fn add(
        &mut self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        node: Node,
        mode: u32,
        umask: u32,
    ) -> Result<u64, Errno> {
        if self.child(parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                node,
                name: name.to_os_string(),
                perm: (mode & !umask & 0o7777) as u16,
                uid: req.uid(),
                gid: req.gid(),
                mtime: SystemTime::now(),
            },
        );
        self.entries_mut(parent)?.insert(name.to_os_string(), ino);
        Ok(ino)
    }

    fn used_bytes(&self) -> u64 {
        self.inodes
            .values()
            .map(|inode| match &inode.node {
                Node::File { data, durable } => data.len().max(durable.len()) as u64,
                Node::Dir { .. } => BLOCK,
            })
            .sum()
    }
}

impl LazyFs {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("lazyfs state")
    }
}

impl Filesystem for LazyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.lock();
        match state.child(parent.0, name) {
            Ok(Some(ino)) => match state.attr(ino) {
                Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
                None => reply.error(Errno::ENOENT),
            },
            Ok(None) => reply.error(Errno::ENOENT),
            Err(err) => reply.error(err),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.lock().attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.lock();
        let Some(inode) = state.inodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(size) = size {
            match &mut inode.node {
                Node::File { data, .. } => data.resize(size as usize, 0),
                Node::Dir { .. } => return reply.error(Errno::EISDIR),
            }
            inode.mtime = SystemTime::now();
        }
        if let Some(mode) = mode {
            inode.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = uid {
            inode.uid = uid;
        }
        if let Some(gid) = gid {
            inode.gid = gid;
        }
        if let Some(mtime) = mtime {
            inode.mtime = match mtime {
                TimeOrNow::SpecificTime(at) => at,
                TimeOrNow::Now => SystemTime::now(),
            };
        }
        let attr = state.attr(ino.0).expect("inode exists");
        reply.attr(&TTL, &attr)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.lock();
        let node = Node::Dir {
            parent: parent.0,
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        match state.add(req, parent.0, name, node, mode, umask) {
            Ok(ino) => reply.entry(&TTL, &state.attr(ino).expect("new inode"), Generation(0)),
            Err(err) => reply.error(err),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.lock();
        let node = Node::File {
            data: Vec::new(),
            durable: Vec::new(),
        };
        match state.add(req, parent.0, name, node, mode, umask) {
            Ok(ino) => reply.created(
                &TTL,
                &state.attr(ino).expect("new inode"),
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(err) => reply.error(err),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.lock();
        match state.entries_mut(parent.0) {
            Ok(entries) => match entries.remove(name) {
                Some(_) => reply.ok(),
                None => reply.error(Errno::ENOENT),
            },
            Err(err) => reply.error(err),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut state = self.lock();
        let child = match state.child(parent.0, name) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(err) => return reply.error(err),
        };
        if state.is_nonempty_dir(child) {
            return reply.error(Errno::ENOTEMPTY);
        }
        state.entries_mut(parent.0).expect("parent").remove(name);
        reply.ok()
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut state = self.lock();
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        let moving = match state.child(parent.0, name) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(err) => return reply.error(err),
        };
        match state.child(newparent.0, newname) {
            Ok(Some(_)) if flags.contains(RenameFlags::RENAME_NOREPLACE) => {
                return reply.error(Errno::EEXIST)
            }
            Ok(Some(target)) if state.is_nonempty_dir(target) => {
                return reply.error(Errno::ENOTEMPTY)
            }
            Ok(_) => {}
            Err(err) => return reply.error(err),
        }
        state.entries_mut(parent.0).expect("parent").remove(name);
        state
            .entries_mut(newparent.0)
            .expect("new parent")
            .insert(newname.to_os_string(), moving);
        if let Some(Inode {
            node: Node::Dir { parent, .. },
            ..
        }) = state.inodes.get_mut(&moving)
        {
            *parent = newparent.0;
        }
        reply.ok()
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.lock().inodes.get(&ino.0) {
            Some(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let state = self.lock();
        match state.inodes.get(&ino.0).map(|inode| &inode.node) {
            Some(Node::File { data, .. }) => {
                let start = (offset as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                reply.data(&data[start..end])
            }
            Some(Node::Dir { .. }) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        bytes: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.lock();
        let Some(inode) = state.inodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        match &mut inode.node {
            Node::File { data, .. } => {
                let end = offset as usize + bytes.len();
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[offset as usize..end].copy_from_slice(bytes);
                inode.mtime = SystemTime::now();
                reply.written(bytes.len() as u32)
            }
            Node::Dir { .. } => reply.error(Errno::EISDIR),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) is not a sync.
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.lock();
        let ignore = state.ignore_sync_suffix.clone();
        let Some(inode) = state.inodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let lying = ignore.is_some_and(|suffix| inode.name.to_string_lossy().ends_with(&suffix));
        if let Node::File { data, durable } = &mut inode.node {
            if lying {
                state.counters.ignored_syncs += 1;
            } else {
                durable.clone_from(data);
                state.counters.file_syncs += 1;
            }
        }
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.lock();
        let Some(inode) = state.inodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Node::Dir {
            entries, durable, ..
        } = &mut inode.node
        {
            durable.clone_from(entries);
            state.counters.dir_syncs += 1;
        }
        reply.ok()
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.lock().inodes.get(&ino.0).map(|inode| &inode.node) {
            Some(Node::Dir { .. }) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Some(Node::File { .. }) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.lock();
        let Some(Node::Dir {
            parent, entries, ..
        }) = state.inodes.get(&ino.0).map(|inode| &inode.node)
        else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut listing = vec![
            (ino.0, FileType::Directory, OsString::from(".")),
            (*parent, FileType::Directory, OsString::from("..")),
        ];
        for (name, child) in entries {
            let kind = match state.inodes.get(child).map(|inode| &inode.node) {
                Some(Node::Dir { .. }) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            listing.push((*child, kind, name.clone()));
        }
        for (i, (child, kind, name)) in listing.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let state = self.lock();
        let blocks = CAPACITY / BLOCK;
        let used = state.used_bytes().div_ceil(BLOCK).min(blocks);
        let files = state.inodes.len() as u64;
        reply.statfs(
            blocks,
            blocks - used,
            blocks - used,
            files + 1_000_000,
            1_000_000,
            BLOCK as u32,
            255,
            BLOCK as u32,
        )
    }
}
