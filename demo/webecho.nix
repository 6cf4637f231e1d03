# The demo app: busybox httpd serving a page that shows $APP_ECHO_ME, built by offline Nix with no
# nixpkgs (Debian's static busybox imported into the store).
{ bbdir, message ? "Hello from a Nix closure on nixfly" }:
let
  bb = builtins.path { path = bbdir; name = "busybox-static"; };
  mk = name: script: builtins.derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "${bb}/bin/sh";
    args = [ "-c" script ];
    PATH = "${bb}/bin";
  };
  site = mk "webecho-site-1.0" ''
    mkdir -p $out/www/cgi-bin
    cat > $out/www/cgi-bin/index.cgi <<EOS
    #!${bb}/bin/sh
    echo "Content-Type: text/html"
    echo
    echo "<h1>${message}</h1>"
    echo "<p>APP_ECHO_ME=\$APP_ECHO_ME</p>"
    EOS
    chmod 555 $out/www/cgi-bin/index.cgi
    echo "<meta http-equiv=refresh content='0; url=/cgi-bin/index.cgi'>" > $out/www/index.html
  '';
  webecho = mk "webecho-1.0" ''
    mkdir -p $out/bin
    cat > $out/bin/webecho <<EOS
    #!${bb}/bin/sh
    # httpd's CGI children inherit this environment, APP_ECHO_ME included.
    exec ${bb}/bin/httpd -f -v -p "\''${PORT:-8080}" -h ${site}/www
    EOS
    chmod 555 $out/bin/webecho
  '';
in { inherit webecho site; }
