//! SFTP requests many at a time, on a second `sftp` channel of the session. libssh2's blocking
//! SFTP calls (what the ssh2 crate binds) send one request and wait for its answer, so a push
//! would cost a round trip per request: about eight per credd destination to look at, nine per
//! file to write. OpenSSH's sftp-server takes each request as it comes and answers in turn; this
//! module speaks SFTP version 3 (draft-ietf-secsh-filexfer-02) itself and sends the same step for
//! every directory or file at once: listing any number of directories takes three round trips,
//! comparing any number of files two, writing up to [`MAX_OPEN`] temp files three. It also
//! carries OpenSSH's `posix-rename@openssh.com`, which the ssh2 crate does not bind.
//!
//! The checks stay with the caller (`deliver`): this module only sends what it is asked and
//! reports each answer. Must never trust a length or a count from the server beyond the packet
//! it came in, take an answer to a request it did not send, or send anything after the channel
//! broke ([`Broken`]: no answer in time, the connection lost, or something that is not an
//! answer); then the caller goes on one request at a time, or, if a rename was left without an
//! answer, not at all.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};

use ssh2::{Channel, ExtendedData, FileStat, Session};

const FXP_INIT: u8 = 1;
const FXP_VERSION: u8 = 2;
const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_LSTAT: u8 = 7;
const FXP_FSTAT: u8 = 8;
const FXP_FSETSTAT: u8 = 10;
const FXP_OPENDIR: u8 = 11;
const FXP_READDIR: u8 = 12;
const FXP_MKDIR: u8 = 14;
const FXP_REALPATH: u8 = 16;
const FXP_RENAME: u8 = 18;
const FXP_EXTENDED: u8 = 200;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
const FXP_NAME: u8 = 104;
const FXP_ATTRS: u8 = 105;

pub(crate) const FX_OK: u32 = 0;
const FX_EOF: u32 = 1;
pub(crate) const FX_NO_SUCH_FILE: u32 = 2;
const FX_BAD_MESSAGE: u32 = 5;
pub(crate) const FX_OP_UNSUPPORTED: u32 = 8;

const FXF_READ: u32 = 0x1;
const FXF_WRITE: u32 = 0x2;
const FXF_CREAT: u32 = 0x8;
const FXF_EXCL: u32 = 0x20;

const ATTR_SIZE: u32 = 0x1;
const ATTR_UIDGID: u32 = 0x2;
const ATTR_PERMISSIONS: u32 = 0x4;
const ATTR_ACMODTIME: u32 = 0x8;
const ATTR_EXTENDED: u32 = 0x8000_0000;

const POSIX_RENAME: &str = "posix-rename@openssh.com";
const FSYNC: &str = "fsync@openssh.com";
/// The most bytes one write request carries.
const WRITE_CHUNK: usize = 32 * 1024;

/// The largest packet taken from the server: sftp-server's own limit on what it sends.
const MAX_PACKET: usize = 256 * 1024;
/// Requests sent before their answers are read. A few kB of requests, far below the window
/// sshd gives the channel: writing them never waits for the server to be read from.
const MAX_IN_FLIGHT: usize = 128;

/// Directories or files open on the server at once: sftp-server holds a descriptor for each.
pub(crate) const MAX_OPEN: usize = 64;

/// The channel is not to be used again: no answer in time, the connection broke, or the server
/// sent something that is not an answer to what was asked.
#[derive(Debug)]
pub(crate) struct Broken(pub String);

impl From<std::io::Error> for Broken {
    fn from(e: std::io::Error) -> Self {
        Broken(e.to_string())
    }
}

impl From<ssh2::Error> for Broken {
    fn from(e: ssh2::Error) -> Self {
        Broken(e.to_string())
    }
}

/// A directory as listed: its entries by name, with the attributes sftp-server takes from lstat.
pub(crate) enum Listed {
    Entries(HashMap<String, FileStat>),
    /// No such directory.
    Absent,
    /// More entries than the limit asked for.
    TooMany,
    Failed(String),
}

/// A file as read: `None` when there is no such file; else the attributes of the open handle
/// (fstat) and the bytes read from offset 0.
pub(crate) type FileRead = Result<Option<(FileStat, Vec<u8>)>, String>;

/// How a `posix-rename@openssh.com` ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RenameStatus {
    /// The server does not offer the extension (nothing was sent).
    Unsupported,
    /// The server's SFTP status code (`FX_OK` when renamed).
    Status(u32),
}

/// The channel and the state of the conversation on it. `S` is the SSH channel in production; the
/// tests put an in-process stand-in for sftp-server there to see what is written when.
pub(crate) struct Pipe<S = Channel> {
    channel: S,
    next_id: u32,
    posix_rename: bool,
    fsync: bool,
}

impl Pipe {
    /// Opens the channel, starts the `sftp` subsystem and agrees on version 3. Blocking,
    /// bounded by the session's timeout.
    pub fn start(session: &Session) -> Result<Pipe, Broken> {
        let mut channel = session.channel_session()?;
        channel.subsystem("sftp")?;
        // What the server writes on stderr is dropped: unread, it would fill the window.
        channel.handle_extended_data(ExtendedData::Ignore)?;
        let mut pipe = Pipe { channel, next_id: 0, posix_rename: false, fsync: false };
        let mut init = Vec::new();
        put_u32(&mut init, 5);
        init.push(FXP_INIT);
        put_u32(&mut init, 3);
        pipe.channel.write_all(&init)?;
        let packet = pipe.packet()?;
        let mut p = Parser(&packet);
        if p.u8()? != FXP_VERSION || p.u32()? != 3 {
            return Err(Broken("the server does not speak SFTP version 3".into()));
        }
        while !p.0.is_empty() {
            let (name, _data) = (p.string()?, p.string()?);
            pipe.posix_rename |= name == POSIX_RENAME.as_bytes();
            pipe.fsync |= name == FSYNC.as_bytes();
        }
        Ok(pipe)
    }
}

impl<S: Read + Write> Pipe<S> {
    /// Lists every directory of `dirs` (in that order), each up to `limit` entries.
    pub fn list_dirs(&mut self, dirs: &[&str], limit: usize) -> Result<Vec<Listed>, Broken> {
        let mut tasks: Vec<ListDir> = dirs.iter().map(|d| ListDir::new(d, limit)).collect();
        for chunk in tasks.chunks_mut(MAX_OPEN) {
            self.run(chunk)?;
        }
        Ok(tasks.into_iter().map(|t| t.outcome.unwrap_or_else(|| Listed::Failed("no answer".into()))).collect())
    }

    /// Reads each of `files` (path, length): opened for reading, fstat on the handle, one read
    /// of that length from offset 0.
    pub fn read_files(&mut self, files: &[(&str, usize)]) -> Result<Vec<FileRead>, Broken> {
        let mut tasks: Vec<ReadFile> = files.iter().map(|&(path, len)| ReadFile::new(path, len)).collect();
        for chunk in tasks.chunks_mut(MAX_OPEN) {
            self.run(chunk)?;
        }
        Ok(tasks.into_iter().map(|t| t.outcome.unwrap_or_else(|| Err("no answer".into()))).collect())
    }

    /// Whether the server offers `fsync@openssh.com`, without which no token file is written.
    pub fn can_fsync(&self) -> bool {
        self.fsync
    }

    /// Creates each temp file (path, mode) exclusively with its mode in the open itself, and
    /// asks where it was created (realpath). At most [`MAX_OPEN`] at a time: each stays open
    /// until [`fill`](Self::fill) closes it.
    pub fn create(&mut self, files: &[(&str, u32)]) -> Result<Vec<Result<Created, String>>, Broken> {
        let mut tasks: Vec<Create> = files.iter().map(|&(path, mode)| Create { path, mode, handle: None, outcome: None }).collect();
        self.run(&mut tasks)?;
        Ok(tasks.into_iter().map(|t| t.outcome.unwrap_or_else(|| Err("no answer".into()))).collect())
    }

    /// For each created file: writes its content, fsyncs it and sets its owner on the handle
    /// (`Some`), then closes it; `None` only closes. The first step that failed, if any.
    pub fn fill(&mut self, files: Vec<(Handle, Contents<'_>)>) -> Result<Vec<Filled>, Broken> {
        let mut tasks: Vec<Fill> = files.into_iter().map(|(handle, write)| Fill { handle, write, steps: VecDeque::new(), failed: None }).collect();
        self.run(&mut tasks)?;
        Ok(tasks.into_iter().map(|t| t.failed.map_or(Ok(()), Err)).collect())
    }

    /// rename(2) of `from` to `to` on the server, replacing `to` if it exists (a symbolic link
    /// at `to` is itself replaced, never followed). `Err`: the request may have been carried
    /// out, and the channel is not to be used again.
    pub fn posix_rename(&mut self, from: &str, to: &str) -> Result<RenameStatus, Broken> {
        if !self.posix_rename {
            return Ok(RenameStatus::Unsupported);
        }
        let (statuses, broken) = self.rename_each(&[(from, to, true)]);
        if let Some(broken) = broken {
            return Err(broken);
        }
        let status = statuses[0].ok_or_else(|| Broken("the rename got no status".into()))?;
        Ok(RenameStatus::Status(status))
    }

    /// Whether the server offers `posix-rename@openssh.com`.
    pub fn can_posix_rename(&self) -> bool {
        self.posix_rename
    }

    /// Every rename (from, to, replace) at once, in that order: `posix-rename@openssh.com`
    /// where `replace` (call only when [`can_posix_rename`](Self::can_posix_rename)), else the
    /// SFTP v3 rename, which sftp-server carries out with link(2) and so never replaces. Each
    /// one's status, `None` where no answer came; and why the channel broke, if it did (a
    /// rename without an answer may have been carried out).
    pub fn rename_each(&mut self, renames: &[(&str, &str, bool)]) -> (Vec<Option<u32>>, Option<Broken>) {
        let mut tasks: Vec<Rename> = renames.iter().map(|&(from, to, replace)| Rename { from, to, replace, status: None }).collect();
        let broken = self.run(&mut tasks).err();
        if tasks.iter().any(|t| t.replace && t.status == Some(FX_OP_UNSUPPORTED)) {
            self.posix_rename = false;
        }
        (tasks.into_iter().map(|t| t.status).collect(), broken)
    }

    /// lstat of each path: its attributes, or the server's status.
    pub fn lstat_each(&mut self, paths: &[&str]) -> Result<Vec<Result<FileStat, u32>>, Broken> {
        let mut tasks = OnPath::each(FXP_LSTAT, paths, lstat_answer);
        self.run(&mut tasks)?;
        Ok(tasks.into_iter().map(|t| t.outcome.unwrap_or(Err(FX_BAD_MESSAGE))).collect())
    }

    /// mkdir of each (path, mode), the mode given in the request itself, in that order. Each
    /// one's status, `None` where no answer came; and why the channel broke, if it did (a
    /// mkdir without an answer may have been carried out).
    pub fn mkdir_each(&mut self, dirs: &[(&str, u32)]) -> (Vec<Option<u32>>, Option<Broken>) {
        let mut tasks: Vec<Mkdir> = dirs.iter().map(|&(path, mode)| Mkdir { path, mode, status: None }).collect();
        let broken = self.run(&mut tasks).err();
        (tasks.into_iter().map(|t| t.status).collect(), broken)
    }

    /// The server's canonical path of each of `paths`.
    pub fn realpath_each(&mut self, paths: &[&str]) -> Result<Vec<Result<String, String>>, Broken> {
        let mut tasks = OnPath::each(FXP_REALPATH, paths, realpath_answer);
        self.run(&mut tasks)?;
        Ok(tasks.into_iter().map(|t| t.outcome.unwrap_or_else(|| Err("realpath failed: no answer".into()))).collect())
    }

    /// Sends every task's requests, as many at a time as [`MAX_IN_FLIGHT`], until every task has
    /// had the answers to all of them.
    fn run<T: Task>(&mut self, tasks: &mut [T]) -> Result<(), Broken> {
        let mut queue: VecDeque<(usize, Request)> = VecDeque::new();
        for (i, task) in tasks.iter_mut().enumerate() {
            queue.extend(task.first().into_iter().map(|r| (i, r)));
        }
        let mut waiting: HashMap<u32, usize> = HashMap::new();
        let mut out = Vec::new();
        loop {
            while waiting.len() < MAX_IN_FLIGHT
                && let Some((task, request)) = queue.pop_front()
            {
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1);
                request.encode(id, &mut out);
                waiting.insert(id, task);
            }
            if !out.is_empty() {
                self.channel.write_all(&out)?;
                out.clear();
            }
            if waiting.is_empty() {
                return Ok(());
            }
            // Every answer to what was sent, unless half the window is free and there is enough
            // waiting to fill what is free: steps go out whole, and no write is small.
            loop {
                let (id, reply) = self.reply()?;
                let task = waiting.remove(&id).ok_or_else(|| Broken(format!("the server answered request {id}, which was not sent")))?;
                queue.extend(tasks[task].answer(reply).into_iter().map(|r| (task, r)));
                let free = MAX_IN_FLIGHT - waiting.len();
                if waiting.is_empty() || (free >= MAX_IN_FLIGHT / 2 && queue.len() >= free) {
                    break;
                }
            }
        }
    }

    /// One packet's body (type and what follows), its length checked.
    fn packet(&mut self) -> Result<Vec<u8>, Broken> {
        let mut len = [0u8; 4];
        self.channel.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if !(1..=MAX_PACKET).contains(&len) {
            return Err(Broken(format!("the server sent a packet of {len} bytes")));
        }
        let mut body = vec![0; len];
        self.channel.read_exact(&mut body)?;
        Ok(body)
    }

    fn reply(&mut self) -> Result<(u32, Reply), Broken> {
        let packet = self.packet()?;
        let mut p = Parser(&packet);
        let kind = p.u8()?;
        let id = p.u32()?;
        let reply = match kind {
            // The message and language tag that follow the code are not needed.
            FXP_STATUS => Reply::Status(p.u32()?),
            FXP_HANDLE => Reply::Handle(p.string()?.to_vec()),
            FXP_DATA => Reply::Data(p.string()?.to_vec()),
            FXP_ATTRS => Reply::Attrs(p.attrs()?),
            FXP_NAME => {
                let count = p.u32()? as usize;
                // An entry takes at least 12 bytes (two empty strings and the attribute flags).
                if count > p.0.len() / 12 {
                    return Err(Broken(format!("the server announced {count} names in a packet of {} bytes", packet.len())));
                }
                let mut names = Vec::with_capacity(count);
                for _ in 0..count {
                    let name = p.string()?.to_vec();
                    let _long = p.string()?;
                    names.push((name, p.attrs()?));
                }
                Reply::Name(names)
            }
            other => return Err(Broken(format!("the server sent a packet of type {other}"))),
        };
        Ok((id, reply))
    }
}

/// An answer from the server.
enum Reply {
    Status(u32),
    Handle(Vec<u8>),
    Data(Vec<u8>),
    Name(Vec<(Vec<u8>, FileStat)>),
    Attrs(FileStat),
}

/// A request without its id.
struct Request {
    kind: u8,
    body: Vec<u8>,
}

impl Request {
    fn with(kind: u8, strings: &[&[u8]]) -> Request {
        let mut body = Vec::new();
        for s in strings {
            put_string(&mut body, s);
        }
        Request { kind, body }
    }

    fn encode(&self, id: u32, out: &mut Vec<u8>) {
        put_u32(out, (1 + 4 + self.body.len()) as u32);
        out.push(self.kind);
        put_u32(out, id);
        out.extend_from_slice(&self.body);
    }
}

/// Work done in steps: the answers to a step's requests give the next step's.
trait Task {
    fn first(&mut self) -> Vec<Request>;
    fn answer(&mut self, reply: Reply) -> Vec<Request>;
}

/// opendir, readdir (two at a time) until end of file, close.
struct ListDir {
    path: String,
    limit: usize,
    handle: Option<Vec<u8>>,
    reading: usize,
    done_reading: bool,
    entries: HashMap<String, FileStat>,
    outcome: Option<Listed>,
}

impl ListDir {
    fn new(path: &str, limit: usize) -> ListDir {
        ListDir { path: path.to_string(), limit, handle: None, reading: 0, done_reading: false, entries: HashMap::new(), outcome: None }
    }

    fn fail(&mut self, why: String) {
        if self.outcome.is_none() {
            self.outcome = Some(Listed::Failed(why));
        }
        self.done_reading = true;
    }
}

impl Task for ListDir {
    fn first(&mut self) -> Vec<Request> {
        vec![Request::with(FXP_OPENDIR, &[self.path.as_bytes()])]
    }

    fn answer(&mut self, reply: Reply) -> Vec<Request> {
        let Some(handle) = self.handle.clone() else {
            match reply {
                // Two reads at once: a directory of up to a hundred entries is read in one round trip.
                Reply::Handle(h) => {
                    self.reading = 2;
                    let readdir = Request::with(FXP_READDIR, &[&h]);
                    let again = Request::with(FXP_READDIR, &[&h]);
                    self.handle = Some(h);
                    return vec![readdir, again];
                }
                Reply::Status(FX_NO_SUCH_FILE) => self.outcome = Some(Listed::Absent),
                Reply::Status(code) => self.outcome = Some(Listed::Failed(format!("opendir: {}", status_text(code)))),
                _ => self.outcome = Some(Listed::Failed("opendir: unexpected answer".into())),
            }
            return Vec::new();
        };
        if self.reading == 0 {
            // The close's answer: the listing was settled before.
            return Vec::new();
        }
        self.reading -= 1;
        match reply {
            Reply::Name(names) if !self.done_reading => {
                for (name, st) in names {
                    if self.entries.len() >= self.limit {
                        self.outcome = Some(Listed::TooMany);
                        self.done_reading = true;
                        break;
                    }
                    if let Ok(name) = String::from_utf8(name) {
                        self.entries.insert(name, st);
                    }
                }
            }
            Reply::Name(_) => {}
            Reply::Status(FX_EOF) => self.done_reading = true,
            Reply::Status(code) => self.fail(format!("readdir: {}", status_text(code))),
            _ => self.fail("readdir: unexpected answer".into()),
        }
        if self.reading > 0 {
            // The other read's answer decides.
            return Vec::new();
        }
        if !self.done_reading {
            self.reading = 2;
            return vec![Request::with(FXP_READDIR, &[&handle]), Request::with(FXP_READDIR, &[&handle])];
        }
        if self.outcome.is_none() {
            self.outcome = Some(Listed::Entries(std::mem::take(&mut self.entries)));
        }
        // The close is answered too; `reading` stays 0, so that answer is taken as the close's.
        vec![Request::with(FXP_CLOSE, &[&handle])]
    }
}

/// open for reading, then fstat, read and close at once.
struct ReadFile {
    path: String,
    len: usize,
    opened: bool,
    stat: Option<FileStat>,
    data: Option<Vec<u8>>,
    outcome: Option<FileRead>,
}

impl ReadFile {
    fn new(path: &str, len: usize) -> ReadFile {
        ReadFile { path: path.to_string(), len, opened: false, stat: None, data: None, outcome: None }
    }
}

impl Task for ReadFile {
    fn first(&mut self) -> Vec<Request> {
        let mut open = Request::with(FXP_OPEN, &[self.path.as_bytes()]);
        put_u32(&mut open.body, FXF_READ);
        put_u32(&mut open.body, 0);
        vec![open]
    }

    fn answer(&mut self, reply: Reply) -> Vec<Request> {
        if !self.opened {
            self.opened = true;
            return match reply {
                Reply::Handle(h) => {
                    let mut read = Request::with(FXP_READ, &[&h]);
                    put_u64(&mut read.body, 0);
                    put_u32(&mut read.body, self.len.min(MAX_PACKET / 2) as u32);
                    vec![Request::with(FXP_FSTAT, &[&h]), read, Request::with(FXP_CLOSE, &[&h])]
                }
                Reply::Status(FX_NO_SUCH_FILE) => {
                    self.outcome = Some(Ok(None));
                    Vec::new()
                }
                Reply::Status(code) => {
                    self.outcome = Some(Err(format!("cannot open: {}", status_text(code))));
                    Vec::new()
                }
                _ => {
                    self.outcome = Some(Err("cannot open: unexpected answer".into()));
                    Vec::new()
                }
            };
        }
        // fstat, read, close: answered in that order, each taken by what it is.
        match reply {
            Reply::Attrs(st) if self.stat.is_none() => self.stat = Some(st),
            Reply::Data(d) if self.data.is_none() => self.data = Some(d),
            Reply::Status(FX_EOF) if self.data.is_none() => self.data = Some(Vec::new()),
            Reply::Status(_) if self.stat.is_some() && self.data.is_some() => {}
            Reply::Status(code) => {
                self.outcome.get_or_insert(Err(format!("cannot read: {}", status_text(code))));
            }
            _ => {
                self.outcome.get_or_insert(Err("cannot read: unexpected answer".into()));
            }
        }
        if self.outcome.is_none()
            && let (Some(st), Some(data)) = (&self.stat, &self.data)
        {
            self.outcome = Some(Ok(Some((st.clone(), data.clone()))));
        }
        Vec::new()
    }
}

/// What [`Pipe::fill`] puts in a created file: its content and the owner to give it (`None`:
/// the file is only closed).
pub(crate) type Contents<'a> = Option<(&'a [u8], Option<(u32, u32)>)>;

/// How a [`Pipe::fill`] ended: the first step that failed, if any.
pub(crate) type Filled = Result<(), (Step, String)>;

/// An open handle on the server.
pub(crate) struct Handle(Vec<u8>);

/// A temp file [`Pipe::create`] made: its open handle, and where it turned out to be.
pub(crate) struct Created {
    pub handle: Handle,
    pub realpath: Result<String, String>,
}

/// A step of [`Pipe::fill`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Write,
    Fsync,
    Owner,
    Close,
}

/// open (write, create, exclusive, with the mode), then realpath.
struct Create<'a> {
    path: &'a str,
    mode: u32,
    handle: Option<Vec<u8>>,
    outcome: Option<Result<Created, String>>,
}

impl Task for Create<'_> {
    fn first(&mut self) -> Vec<Request> {
        let mut open = Request::with(FXP_OPEN, &[self.path.as_bytes()]);
        put_u32(&mut open.body, FXF_WRITE | FXF_CREAT | FXF_EXCL);
        put_u32(&mut open.body, ATTR_PERMISSIONS);
        put_u32(&mut open.body, self.mode);
        vec![open]
    }

    fn answer(&mut self, reply: Reply) -> Vec<Request> {
        let Some(handle) = self.handle.take() else {
            return match reply {
                Reply::Handle(h) => {
                    self.handle = Some(h);
                    vec![Request::with(FXP_REALPATH, &[self.path.as_bytes()])]
                }
                Reply::Status(code) => {
                    self.outcome = Some(Err(status_text(code)));
                    Vec::new()
                }
                _ => {
                    self.outcome = Some(Err("unexpected answer".into()));
                    Vec::new()
                }
            };
        };
        self.outcome = Some(Ok(Created { handle: Handle(handle), realpath: realpath_answer(reply) }));
        Vec::new()
    }
}

/// The path in the answer to a realpath request.
fn realpath_answer(reply: Reply) -> Result<String, String> {
    match reply {
        Reply::Name(names) if names.len() == 1 => {
            String::from_utf8(names.into_iter().next().expect("one name").0).map_err(|_| "realpath is not UTF-8".to_string())
        }
        Reply::Status(code) => Err(format!("realpath failed: {}", status_text(code))),
        _ => Err("realpath failed: unexpected answer".into()),
    }
}

/// One mkdir, with the directory's mode.
struct Mkdir<'a> {
    path: &'a str,
    mode: u32,
    status: Option<u32>,
}

impl Task for Mkdir<'_> {
    fn first(&mut self) -> Vec<Request> {
        let mut mkdir = Request::with(FXP_MKDIR, &[self.path.as_bytes()]);
        put_u32(&mut mkdir.body, ATTR_PERMISSIONS);
        put_u32(&mut mkdir.body, self.mode);
        vec![mkdir]
    }

    fn answer(&mut self, reply: Reply) -> Vec<Request> {
        // Anything but a status is no answer to a mkdir.
        self.status = Some(if let Reply::Status(code) = reply { code } else { FX_BAD_MESSAGE });
        Vec::new()
    }
}

/// write, fsync, fsetstat (owner), close: sent at once, answered in that order.
struct Fill<'a> {
    handle: Handle,
    write: Contents<'a>,
    steps: VecDeque<Step>,
    failed: Option<(Step, String)>,
}

impl Task for Fill<'_> {
    fn first(&mut self) -> Vec<Request> {
        let h = &self.handle.0;
        let mut requests = Vec::new();
        if let Some((content, owner)) = self.write {
            for (i, chunk) in content.chunks(WRITE_CHUNK).enumerate() {
                let mut write = Request::with(FXP_WRITE, &[h]);
                put_u64(&mut write.body, (i * WRITE_CHUNK) as u64);
                put_string(&mut write.body, chunk);
                requests.push(write);
                self.steps.push_back(Step::Write);
            }
            requests.push(Request::with(FXP_EXTENDED, &[FSYNC.as_bytes(), h]));
            self.steps.push_back(Step::Fsync);
            if let Some((uid, gid)) = owner {
                let mut owner = Request::with(FXP_FSETSTAT, &[h]);
                put_u32(&mut owner.body, ATTR_UIDGID);
                put_u32(&mut owner.body, uid);
                put_u32(&mut owner.body, gid);
                requests.push(owner);
                self.steps.push_back(Step::Owner);
            }
        }
        requests.push(Request::with(FXP_CLOSE, &[h]));
        self.steps.push_back(Step::Close);
        requests
    }

    fn answer(&mut self, reply: Reply) -> Vec<Request> {
        let step = self.steps.pop_front().unwrap_or(Step::Close);
        let failure = match reply {
            Reply::Status(FX_OK) => None,
            Reply::Status(code) => Some(status_text(code)),
            _ => Some("unexpected answer".into()),
        };
        // A close that fails loses nothing: what was written was fsynced.
        if let Some(detail) = failure
            && step != Step::Close
            && self.failed.is_none()
        {
            self.failed = Some((step, detail));
        }
        Vec::new()
    }
}

/// One `posix-rename@openssh.com`.
struct Rename<'a> {
    from: &'a str,
    to: &'a str,
    replace: bool,
    status: Option<u32>,
}

impl Task for Rename<'_> {
    fn first(&mut self) -> Vec<Request> {
        let (from, to) = (self.from.as_bytes(), self.to.as_bytes());
        vec![if self.replace { Request::with(FXP_EXTENDED, &[POSIX_RENAME.as_bytes(), from, to]) } else { Request::with(FXP_RENAME, &[from, to]) }]
    }

    fn answer(&mut self, reply: Reply) -> Vec<Request> {
        // Anything but a status is no answer to a rename.
        self.status = Some(if let Reply::Status(code) = reply { code } else { FX_BAD_MESSAGE });
        Vec::new()
    }
}

/// One request about a path (lstat, realpath), its answer read by `read`.
struct OnPath<'a, T> {
    kind: u8,
    path: &'a str,
    read: fn(Reply) -> T,
    outcome: Option<T>,
}

impl<'a, T> OnPath<'a, T> {
    fn each(kind: u8, paths: &[&'a str], read: fn(Reply) -> T) -> Vec<OnPath<'a, T>> {
        paths.iter().map(|&path| OnPath { kind, path, read, outcome: None }).collect()
    }
}

impl<T> Task for OnPath<'_, T> {
    fn first(&mut self) -> Vec<Request> {
        vec![Request::with(self.kind, &[self.path.as_bytes()])]
    }

    fn answer(&mut self, reply: Reply) -> Vec<Request> {
        self.outcome = Some((self.read)(reply));
        Vec::new()
    }
}

/// The attributes in the answer to an lstat, or the server's status.
fn lstat_answer(reply: Reply) -> Result<FileStat, u32> {
    match reply {
        Reply::Attrs(st) => Ok(st),
        Reply::Status(code) => Err(code),
        _ => Err(FX_BAD_MESSAGE),
    }
}

/// An SFTP status code as a word (the server's own message is not kept).
pub(crate) fn status_text(code: u32) -> String {
    let name = match code {
        FX_OK => "ok",
        FX_EOF => "end of file",
        FX_NO_SUCH_FILE => "no such file",
        3 => "permission denied",
        4 => "failure",
        FX_BAD_MESSAGE => "bad message",
        FX_OP_UNSUPPORTED => "operation unsupported",
        _ => "unknown",
    };
    format!("SFTP status {code} ({name})")
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s);
}

/// Reads a packet front to back; running past its end is [`Broken`].
struct Parser<'a>(&'a [u8]);

impl<'a> Parser<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Broken> {
        if n > self.0.len() {
            return Err(Broken("the server sent a packet shorter than its contents".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Broken> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, Broken> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, Broken> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn string(&mut self) -> Result<&'a [u8], Broken> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn attrs(&mut self) -> Result<FileStat, Broken> {
        let flags = self.u32()?;
        let mut st = FileStat { size: None, uid: None, gid: None, perm: None, atime: None, mtime: None };
        if flags & ATTR_SIZE != 0 {
            st.size = Some(self.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            st.uid = Some(self.u32()?);
            st.gid = Some(self.u32()?);
        }
        if flags & ATTR_PERMISSIONS != 0 {
            st.perm = Some(self.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            st.atime = Some(u64::from(self.u32()?));
            st.mtime = Some(u64::from(self.u32()?));
        }
        if flags & ATTR_EXTENDED != 0 {
            let count = self.u32()?;
            for _ in 0..count {
                self.string()?;
                self.string()?;
            }
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs_bytes(flags: u32, fields: &[u32]) -> Vec<u8> {
        let mut b = Vec::new();
        put_u32(&mut b, flags);
        for f in fields {
            put_u32(&mut b, *f);
        }
        b
    }

    #[test]
    fn attributes_are_read_by_their_flags() {
        let mut b = Vec::new();
        put_u32(&mut b, ATTR_SIZE | ATTR_UIDGID | ATTR_PERMISSIONS | ATTR_ACMODTIME);
        put_u64(&mut b, 153);
        for v in [1000, 1001, 0o100_600, 7, 9] {
            put_u32(&mut b, v);
        }
        let st = Parser(&b).attrs().unwrap();
        assert_eq!((st.size, st.uid, st.gid, st.perm, st.atime, st.mtime), (Some(153), Some(1000), Some(1001), Some(0o100_600), Some(7), Some(9)));
        let st = Parser(&attrs_bytes(ATTR_PERMISSIONS, &[0o40_755])).attrs().unwrap();
        assert_eq!((st.size, st.uid, st.perm, st.mtime), (None, None, Some(0o40_755), None));
    }

    #[test]
    fn a_length_past_the_packet_is_refused() {
        let mut b = Vec::new();
        put_u32(&mut b, 1 << 20);
        b.extend_from_slice(b"short");
        assert!(Parser(&b).string().is_err());
        assert!(Parser(&attrs_bytes(ATTR_SIZE, &[])).attrs().is_err());
        let mut extended = attrs_bytes(ATTR_EXTENDED, &[u32::MAX]);
        extended.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(Parser(&extended).attrs().is_err());
    }

    fn status(code: u32) -> Reply {
        Reply::Status(code)
    }

    #[test]
    fn a_listing_reads_until_end_of_file_then_closes() {
        let mut t = ListDir::new("/spool/a", 10);
        assert_eq!(t.first().len(), 1);
        let next = t.answer(Reply::Handle(b"h".to_vec()));
        assert!(next.iter().all(|r| r.kind == FXP_READDIR) && next.len() == 2);
        let st = FileStat { size: Some(1), uid: None, gid: None, perm: Some(0o100_600), atime: None, mtime: None };
        let next = t.answer(Reply::Name(vec![(b"x.top".to_vec(), st.clone()), (vec![0xff], st.clone())]));
        assert!(next.is_empty(), "the other read is still out");
        let next = t.answer(Reply::Name(vec![(b"x.use".to_vec(), st.clone())]));
        assert_eq!(next.len(), 2, "two more reads while the end is not seen");
        assert!(t.answer(status(FX_EOF)).is_empty(), "a read is still out");
        let close = t.answer(status(FX_EOF));
        assert_eq!(close.iter().map(|r| r.kind).collect::<Vec<_>>(), vec![FXP_CLOSE]);
        assert!(t.answer(status(FX_OK)).is_empty());
        let Some(Listed::Entries(entries)) = t.outcome else { panic!("listed") };
        let mut names: Vec<&String> = entries.keys().collect();
        names.sort();
        assert_eq!(names, vec!["x.top", "x.use"], "a name that is not UTF-8 is left out");
    }

    #[test]
    fn a_listing_stops_at_its_limit_and_on_errors() {
        let st = FileStat { size: None, uid: None, gid: None, perm: None, atime: None, mtime: None };
        let mut t = ListDir::new("/d", 1);
        t.first();
        t.answer(Reply::Handle(b"h".to_vec()));
        assert!(t.answer(Reply::Name(vec![(b"a".to_vec(), st.clone()), (b"b".to_vec(), st.clone())])).is_empty());
        assert_eq!(t.answer(status(FX_EOF)).len(), 1, "closed");
        assert!(matches!(t.outcome, Some(Listed::TooMany)));

        let mut t = ListDir::new("/d", 10);
        t.first();
        assert!(t.answer(status(FX_NO_SUCH_FILE)).is_empty());
        assert!(matches!(t.outcome, Some(Listed::Absent)));

        let mut t = ListDir::new("/d", 10);
        t.first();
        t.answer(Reply::Handle(b"h".to_vec()));
        t.answer(status(3));
        assert_eq!(t.answer(status(FX_EOF)).len(), 1, "closed");
        assert!(matches!(t.outcome, Some(Listed::Failed(_))));
    }

    /// In-process stand-in for sftp-server (no real server shows when requests arrive): answers
    /// every request of a write at once, as sftp-server does, and records how many requests each
    /// write carried. A read with no answer due panics: the client would wait forever.
    #[derive(Default)]
    struct StandIn {
        writes: Vec<Vec<u8>>,
        answers: VecDeque<u8>,
        read_dirs: HashMap<Vec<u8>, bool>,
        open: usize,
        most_open: usize,
        /// Requests of this type are refused (permission denied).
        refuse: Option<u8>,
        /// Only this many requests are answered; then reads time out.
        answered: Option<usize>,
    }

    impl StandIn {
        fn answer(&mut self, kind: u8, id: u32, body: &[u8]) {
            let mut b = Vec::new();
            put_u32(&mut b, (5 + body.len()) as u32);
            b.push(kind);
            put_u32(&mut b, id);
            b.extend_from_slice(body);
            self.answers.extend(b);
        }
    }

    impl Write for StandIn {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut p = Parser(buf);
            let mut kinds = Vec::new();
            while !p.0.is_empty() {
                let len = p.u32().unwrap() as usize;
                let mut q = Parser(p.take(len).unwrap());
                let (kind, id) = (q.u8().unwrap(), q.u32().unwrap());
                kinds.push(kind);
                if let Some(n) = &mut self.answered {
                    if *n == 0 {
                        continue;
                    }
                    *n -= 1;
                }
                let mut ok = Vec::new();
                put_u32(&mut ok, FX_OK);
                match kind {
                    kind if Some(kind) == self.refuse => self.answer(FXP_STATUS, id, &3u32.to_be_bytes()),
                    FXP_OPENDIR | FXP_OPEN => {
                        self.open += 1;
                        self.most_open = self.most_open.max(self.open);
                        let mut h = Vec::new();
                        put_string(&mut h, q.string().unwrap());
                        self.answer(FXP_HANDLE, id, &h);
                    }
                    FXP_READDIR => {
                        let handle = q.string().unwrap().to_vec();
                        if std::mem::replace(self.read_dirs.entry(handle).or_default(), true) {
                            self.answer(FXP_STATUS, id, &FX_EOF.to_be_bytes());
                        } else {
                            let mut names = Vec::new();
                            put_u32(&mut names, 1);
                            put_string(&mut names, b"x.top");
                            put_string(&mut names, b"");
                            put_u32(&mut names, ATTR_SIZE);
                            put_u64(&mut names, 3);
                            self.answer(FXP_NAME, id, &names);
                        }
                    }
                    FXP_REALPATH => {
                        let mut names = Vec::new();
                        put_u32(&mut names, 1);
                        put_string(&mut names, q.string().unwrap());
                        put_string(&mut names, b"");
                        put_u32(&mut names, 0);
                        self.answer(FXP_NAME, id, &names);
                    }
                    FXP_FSTAT | FXP_LSTAT => self.answer(FXP_ATTRS, id, &[0, 0, 0, ATTR_SIZE as u8, 0, 0, 0, 0, 0, 0, 0, 3]),
                    FXP_READ => {
                        let mut d = Vec::new();
                        put_string(&mut d, b"abc");
                        self.answer(FXP_DATA, id, &d);
                    }
                    _ => {
                        self.open -= usize::from(kind == FXP_CLOSE);
                        self.answer(FXP_STATUS, id, &ok);
                    }
                }
            }
            self.writes.push(kinds);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Read for StandIn {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.answers.is_empty() && self.answered.is_some() {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"));
            }
            assert!(!self.answers.is_empty(), "read with no answer due: the client would wait forever");
            let n = buf.len().min(self.answers.len());
            for (b, a) in buf.iter_mut().zip(self.answers.drain(..n)) {
                *b = a;
            }
            Ok(n)
        }
    }

    #[test]
    fn each_step_goes_out_for_every_directory_and_file_in_one_write() {
        let mut pipe = Pipe { channel: StandIn::default(), next_id: 0, posix_rename: true, fsync: true };
        let dirs: Vec<String> = (0..40).map(|i| format!("/spool/acct{i}")).collect();
        let listed = pipe.list_dirs(&dirs.iter().map(String::as_str).collect::<Vec<_>>(), 10).unwrap();
        assert!(listed.iter().all(|l| matches!(l, Listed::Entries(e) if e.contains_key("x.top"))));
        let kinds: Vec<Vec<u8>> = std::mem::take(&mut pipe.channel.writes);
        assert_eq!(kinds.len(), 3, "open, read, close: three round trips for all: {kinds:?}");
        assert_eq!(kinds[0], vec![FXP_OPENDIR; 40]);
        assert_eq!(kinds[1], vec![FXP_READDIR; 80]);
        assert_eq!(kinds[2], vec![FXP_CLOSE; 40]);

        let files: Vec<(&str, usize)> = dirs.iter().map(|d| (d.as_str(), 3)).collect();
        let read = pipe.read_files(&files).unwrap();
        assert!(read.iter().all(|r| matches!(r, Ok(Some((st, data))) if st.size == Some(3) && data == b"abc")));
        let kinds = std::mem::take(&mut pipe.channel.writes);
        assert_eq!(kinds.len(), 2, "two round trips for all: {kinds:?}");
        assert_eq!(kinds[0], vec![FXP_OPEN; 40]);
        assert_eq!(kinds[1], [FXP_FSTAT, FXP_READ, FXP_CLOSE].repeat(40));

        assert_eq!(pipe.posix_rename("/a/.x.tb-1", "/a/x").unwrap(), RenameStatus::Status(FX_OK));
        assert_eq!(pipe.channel.writes, vec![vec![FXP_EXTENDED]]);
        assert!(pipe.channel.answers.is_empty(), "every answer was read");
    }

    #[test]
    fn temp_files_are_created_checked_and_filled_a_step_for_all_at_once() {
        let mut pipe = Pipe { channel: StandIn::default(), next_id: 0, posix_rename: true, fsync: true };
        let temps: Vec<String> = (0..3).map(|i| format!("/spool/acct{i}/.x.top.tb-1")).collect();
        let specs: Vec<(&str, u32)> = temps.iter().map(|t| (t.as_str(), 0o600)).collect();
        let created = pipe.create(&specs).unwrap();
        let writes = std::mem::take(&mut pipe.channel.writes);
        assert_eq!(writes, vec![vec![FXP_OPEN; 3], vec![FXP_REALPATH; 3]]);
        let mut fills = Vec::new();
        for (c, t) in created.into_iter().zip(&temps) {
            let c = c.unwrap();
            assert_eq!(c.realpath.as_deref(), Ok(t.as_str()));
            fills.push((c.handle, Some((&b"token"[..], Some((1000, 1000))))));
        }
        assert!(pipe.fill(fills).unwrap().iter().all(Result::is_ok));
        assert_eq!(pipe.channel.writes, vec![[FXP_WRITE, FXP_EXTENDED, FXP_FSETSTAT, FXP_CLOSE].repeat(3)]);
        assert_eq!(pipe.channel.open, 0, "every handle closed");

        // A refused step is the one reported; a file only to be closed is only closed.
        let mut pipe = Pipe { channel: StandIn { refuse: Some(FXP_FSETSTAT), ..StandIn::default() }, next_id: 0, posix_rename: true, fsync: true };
        let mut created = pipe.create(&specs[..2]).unwrap().into_iter().map(|c| c.unwrap().handle);
        let fills = vec![(created.next().unwrap(), Some((&b"token"[..], Some((1000, 1000))))), (created.next().unwrap(), None)];
        pipe.channel.writes.clear();
        let filled = pipe.fill(fills).unwrap();
        assert!(matches!(&filled[0], Err((Step::Owner, detail)) if detail.contains("permission denied")), "{filled:?}");
        assert!(filled[1].is_ok());
        assert_eq!(pipe.channel.writes, vec![vec![FXP_WRITE, FXP_EXTENDED, FXP_FSETSTAT, FXP_CLOSE, FXP_CLOSE]]);

        let mut pipe = Pipe { channel: StandIn { refuse: Some(FXP_OPEN), ..StandIn::default() }, next_id: 0, posix_rename: true, fsync: true };
        assert!(matches!(&pipe.create(&specs[..1]).unwrap()[0], Err(e) if e.contains("permission denied")));
    }

    #[test]
    fn renames_and_lstats_go_out_at_once_and_a_refusal_is_per_rename() {
        let mut pipe = Pipe { channel: StandIn { refuse: Some(FXP_RENAME), ..StandIn::default() }, next_id: 0, posix_rename: true, fsync: true };
        let stats = pipe.lstat_each(&["/a/.x.tb-1", "/a/.y.tb-2"]).unwrap();
        assert!(stats.iter().all(|st| matches!(st, Ok(st) if st.size == Some(3))));
        let (statuses, broken) = pipe.rename_each(&[("/a/.x.tb-1", "/a/x", true), ("/a/.y.tb-2", "/a/y", false)]);
        assert!(broken.is_none());
        assert_eq!(statuses, vec![Some(FX_OK), Some(3)], "the plain rename was refused, the posix-rename not");
        assert_eq!(pipe.channel.writes, vec![vec![FXP_LSTAT; 2], vec![FXP_EXTENDED, FXP_RENAME]]);

        // A server that stops answering: what was answered stays known, the rest is unknown.
        let mut pipe = Pipe { channel: StandIn { answered: Some(1), ..StandIn::default() }, next_id: 0, posix_rename: true, fsync: true };
        let (statuses, broken) = pipe.rename_each(&[("/a/.x.tb-1", "/a/x", true), ("/a/.y.tb-2", "/a/y", true)]);
        assert_eq!(statuses, vec![Some(FX_OK), None]);
        assert!(broken.is_some_and(|Broken(e)| e.contains("timed out")));
    }

    #[test]
    fn new_directories_are_made_with_their_mode_and_resolved_a_step_for_all_at_once() {
        let mut pipe = Pipe { channel: StandIn::default(), next_id: 0, posix_rename: true, fsync: true };
        let dirs: Vec<String> = (0..40).map(|i| format!("/spool/acct{i}")).collect();
        let specs: Vec<(&str, u32)> = dirs.iter().map(|d| (d.as_str(), 0o700)).collect();
        let (statuses, broken) = pipe.mkdir_each(&specs);
        assert!(broken.is_none());
        assert_eq!(statuses, vec![Some(FX_OK); 40]);
        let paths: Vec<&str> = dirs.iter().map(String::as_str).collect();
        let resolved = pipe.realpath_each(&paths).unwrap();
        assert_eq!(resolved, dirs.iter().map(|d| Ok(d.clone())).collect::<Vec<_>>());
        assert_eq!(pipe.channel.writes, vec![vec![FXP_MKDIR; 40], vec![FXP_REALPATH; 40]], "one round trip a step");

        // The mode travels in the request itself: the directory is never more open.
        let request = Mkdir { path: "/spool/acct0", mode: 0o700, status: None }.first().remove(0);
        let mut p = Parser(&request.body);
        assert_eq!((request.kind, p.string().unwrap(), p.u32().unwrap(), p.u32().unwrap()), (FXP_MKDIR, &b"/spool/acct0"[..], ATTR_PERMISSIONS, 0o700));

        // A server that stops answering: the mkdir answered is known, the rest may have happened.
        let mut pipe = Pipe { channel: StandIn { answered: Some(1), ..StandIn::default() }, next_id: 0, posix_rename: true, fsync: true };
        let (statuses, broken) = pipe.mkdir_each(&specs[..3]);
        assert_eq!(statuses, vec![Some(FX_OK), None, None]);
        assert!(broken.is_some_and(|Broken(e)| e.contains("timed out")));
        // A refusal is that directory's, and a failed realpath is said so.
        let mut pipe = Pipe { channel: StandIn { refuse: Some(FXP_REALPATH), ..StandIn::default() }, next_id: 0, posix_rename: true, fsync: true };
        assert!(matches!(&pipe.realpath_each(&paths[..1]).unwrap()[0], Err(e) if e.starts_with("realpath failed") && e.contains("permission denied")));
    }

    #[test]
    fn many_directories_go_out_in_large_writes_with_a_bounded_number_open() {
        let mut pipe = Pipe { channel: StandIn::default(), next_id: 0, posix_rename: true, fsync: true };
        let dirs: Vec<String> = (0..500).map(|i| format!("/spool/acct{i}")).collect();
        let listed = pipe.list_dirs(&dirs.iter().map(String::as_str).collect::<Vec<_>>(), 10).unwrap();
        assert_eq!(listed.len(), 500);
        assert!(listed.iter().all(|l| matches!(l, Listed::Entries(e) if e.len() == 1)));
        let writes = &pipe.channel.writes;
        assert!(writes.iter().all(|w| w.len() <= MAX_IN_FLIGHT), "never more than {MAX_IN_FLIGHT} out");
        assert!(writes.len() <= 2000 / (MAX_IN_FLIGHT / 2) + 3, "no small writes: {writes:?}");
        assert_eq!(writes.iter().map(Vec::len).sum::<usize>(), 500 * 4);
        assert_eq!((pipe.channel.most_open, pipe.channel.open), (MAX_OPEN, 0), "at most {MAX_OPEN} open at once, all closed");
    }

    #[test]
    fn an_answer_to_a_request_not_sent_breaks_the_channel() {
        let mut pipe = Pipe { channel: StandIn::default(), next_id: 0, posix_rename: true, fsync: true };
        pipe.channel.answer(FXP_STATUS, 77, &FX_OK.to_be_bytes());
        assert!(pipe.list_dirs(&["/d"], 10).is_err());
        let mut pipe = Pipe { channel: StandIn::default(), next_id: 0, posix_rename: false, fsync: true };
        assert_eq!(pipe.posix_rename("/a", "/b").unwrap(), RenameStatus::Unsupported);
        assert!(pipe.channel.writes.is_empty(), "nothing sent to a server without the extension");
    }

    #[test]
    fn a_read_takes_the_handles_attributes_and_bytes() {
        let st = FileStat { size: Some(3), uid: Some(0), gid: Some(0), perm: Some(0o100_600), atime: None, mtime: None };
        let mut t = ReadFile::new("/f", 3);
        t.first();
        let next = t.answer(Reply::Handle(b"h".to_vec()));
        assert_eq!(next.iter().map(|r| r.kind).collect::<Vec<_>>(), vec![FXP_FSTAT, FXP_READ, FXP_CLOSE]);
        t.answer(Reply::Attrs(st));
        t.answer(Reply::Data(b"abc".to_vec()));
        t.answer(status(FX_OK));
        let Some(Ok(Some((st, data)))) = t.outcome else { panic!("read") };
        assert_eq!((st.size, data), (Some(3), b"abc".to_vec()));

        let mut t = ReadFile::new("/f", 3);
        t.first();
        t.answer(Reply::Handle(b"h".to_vec()));
        t.answer(status(3));
        assert!(matches!(t.outcome, Some(Err(_))), "an fstat refused fails the read");
    }
}
