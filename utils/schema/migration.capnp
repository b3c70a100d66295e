# The migration stream: a job's CRIU image directory carried from the source node to the
# target as a sequence of framed StreamMessages on one connection:
#   header, then for each file in header order: chunk* and fileEnd, then trailer.
# Chunks are about 1 MiB; every file ends with its size and, on a stream in clear, an
# XXH3-64 checksum, so the receiver can tell a cut or damaged stream from a complete one.
# A stream carried in a peer connection's authenticated records (every real move) says so
# in its header and leaves the checksums out: each record's tag already proves its bytes
# arrived as sent, and a cut, altered or reordered record is an error of the record layer.
@0xf1cc3e52ad0e117d;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("homeward::schema");

const migrationVersion :UInt16 = 1;

struct StreamMessage {
  union {
    header @0 :StreamHeader;
    chunk @1 :FileChunk;
    fileEnd @2 :FileEnd;
    trailer @3 :StreamTrailer;
  }
}

struct StreamHeader {
  version @0 :UInt16;
  # The sender's migrationVersion; a receiver refuses a version it does not speak.
  job @1 :JobMetadata;
  files @2 :List(FileEntry);
  totalBytes @3 :UInt64;
  # The sum of the files' sizes, so a receiver can refuse a stream it has no room for.
  sealed @4 :Bool;
  # The sender seals the stream in authenticated records and puts no checksum in its
  # fileEnds (their xxh64 is 0). A receiver takes that only from a stream it opens from
  # such records; a stream in clear that says it is sealed is refused.
}

struct JobMetadata {
  jobId @0 :UInt64;
  homeNode @1 :Text;
  homePid @2 :Int32;
  externalPipes @3 :List(ExternalPipe);
  # The job's pipes to the outside, which the target re-plumbs with --inherit-fd.
  criuVersion @4 :Text;
  input @5 :CarriedInput;
  # The job's standard input the source reclaimed once the job was frozen.
  lockToken @6 :UInt64;
  # Not 0: the locks the job held through homefs are kept at its home under this token
  # while it moves; the target claims them before the job runs (see ARCHITECTURE.md,
  # "Locks across a move").
  lazyToken @7 :UInt64;
  # Not 0: a lazy move. The images hold no memory: the target's criu lazy-pages pulls it
  # from the source's lazy dump on a "lazy-pages" peer connection that the source opened
  # with this token (see ARCHITECTURE.md, "Lazy moves").
  memoryBytes @8 :UInt64;
  # A lazy move: the resident memory of the job's processes at the freeze, which the
  # target, whose images hold none of it, checks against its free memory.
}

struct CarriedInput {
  # The job's stdin pipe is external (not in the images): what the job had not yet read
  # travels here, and the target writes it into the job's new pipe before anything else.
  offset @0 :UInt64;
  # The stream offset of the first byte the job has not read.
  data @1 :Data;
  # The bytes from there that sat in the pipe (at most the pipe's capacity).
  ended @2 :Bool;
  # mosrun's end of input had been written after them: the new pipe is closed after them.
}

struct ExternalPipe {
  inode @0 :UInt64;
  # The pipe's inode at the source, as the images name it (pipe:[inode]).
  role @1 :Text;
  # What it carries for the job ("stdin", "stdout", "stderr", "status").
}

struct FileEntry {
  name @0 :Text;
  # A plain file name: no '/', not "." or "..".
  size @1 :UInt64;
  mode @2 :UInt32;
}

struct FileChunk {
  file @0 :UInt32;
  # Index into header.files; files are sent in order, chunks in order of offset.
  offset @1 :UInt64;
  data @2 :Data;
}

struct FileEnd {
  file @0 :UInt32;
  size @1 :UInt64;
  xxh64 @2 :UInt64;
  # XXH3-64 of the file's bytes; 0 and unchecked in a sealed stream (header.sealed).
}

struct StreamTrailer {
  files @0 :UInt32;
  totalBytes @1 :UInt64;
}
