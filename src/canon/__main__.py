from canon.cli import main

raise SystemExit(main())
