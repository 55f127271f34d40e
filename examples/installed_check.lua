-- Used by .ci/run to check a luarocks-installed tether: reply and exit.
require("tether").parent:send("installed")
