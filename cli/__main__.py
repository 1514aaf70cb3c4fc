from agentstream.cli.app import main

main()
