# A stand-in for dockerTools.streamLayeredImage that needs no nixpkgs: its output is an executable script
# in the store that writes a docker-archive to stdout the way stream_layered_image.py does — every layer
# (<diff_id>/layer.tar) first, then the config, manifest.json last — here with busybox tar.
#   bbdir: a directory with bin/busybox and its applet links; parts: the archive's members plus
#   "order", the member names in the order they are written. fail: "1" makes the script fail half-way.
{ bbdir, parts, fail ? "", system ? builtins.currentSystem }:
let
  bb = builtins.path { path = bbdir; name = "busybox-static"; };
  members = builtins.path { path = parts; name = "testimg-members"; };
  conf = builtins.derivation {
    name = "testimg-conf.json";
    inherit system;
    builder = "${bb}/bin/sh";
    PATH = "${bb}/bin";
    args = [ "-c" "cp ${members}/order $out" ];
  };
  streamer = builtins.derivation {
    name = "stream";
    inherit system;
    builder = "${bb}/bin/sh";
    PATH = "${bb}/bin";
    args = [ "-c" ''
      {
        echo '#!${bb}/bin/sh'
        echo 'echo "Creating layers from ${members}" >&2'
        echo 'cd ${members} || exit 1'
        if [ -n "${fail}" ]; then
          echo 'tar -cf - $(cat "$1") | head -c 20000; echo "stream: out of disk space" >&2; exit 3'
        fi
        echo 'exec ${bb}/bin/tar -cf - $(cat "$1")'
      } > $out
      chmod +x $out
    '' ];
  };
in builtins.derivation {
  name = "stream-testimg";
  inherit system;
  builder = "${bb}/bin/sh";
  PATH = "${bb}/bin";
  args = [ "-c" ''
    printf '#!${bb}/bin/sh\nexec ${streamer} ${conf} "$@"\n' > $out
    chmod +x $out
  '' ];
}
